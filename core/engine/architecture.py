"""Architecture summary table: layer, type, output shape, parameters, SE role."""
from __future__ import annotations

import pandas as pd


def se_roles(model) -> dict[str, str]:
    """Tap name -> 'blockname: role' for layers that belong to an SE block found by structure."""
    from core.engine.se import find_se_blocks

    roles: dict[str, str] = {}
    for b in find_se_blocks(model):
        for role in ("squeeze", "hidden", "logits", "gate", "excite"):
            name = getattr(b, role, None)
            if isinstance(name, str) and name:
                roles.setdefault(name, f"{b.name}: {role}")
    return roles


def _own_params(layer) -> int:
    """Parameters of a layer; 0 for a nested model, whose layers have rows of their own."""
    import keras

    return 0 if isinstance(layer, keras.Model) or not layer.built else int(layer.count_params())


def architecture_table(model) -> pd.DataFrame:
    """One row per layer (nested models' layers as ``outer/inner``): name, type, output shape
    (without batch), parameter count, SE role."""
    from core.engine.graph import build_graph

    graph = build_graph(model)
    roles = se_roles(model)
    rows = [{"layer": name, "type": type(layer).__name__,
             "output shape": str(tuple(graph.outputs[id(layer)].shape[1:])),
             "params": _own_params(layer), "SE block": roles.get(name, "")}
            for name, layer in graph.layers()]
    return pd.DataFrame(rows)
