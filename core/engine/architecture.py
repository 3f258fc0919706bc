"""Architecture summary table: layer, type, output shape, parameters, SE role."""
from __future__ import annotations

import pandas as pd


def _shape(layer) -> str:
    try:
        out = layer.output
    except (AttributeError, ValueError):
        return "?"
    outs = out if isinstance(out, (list, tuple)) else [out]
    return ", ".join(str(tuple(o.shape[1:])) for o in outs)


def se_roles(model) -> dict[str, str]:
    """Layer name -> 'blockname: role' for layers that belong to an SE block found by structure."""
    from core.engine.se import find_se_blocks

    roles: dict[str, str] = {}
    for b in find_se_blocks(model):
        for role in ("squeeze", "hidden", "logits", "gate", "excite"):
            name = getattr(b, role, None)
            if isinstance(name, str) and name:
                roles.setdefault(name, f"{b.name}: {role}")
    return roles


def architecture_table(model) -> pd.DataFrame:
    """One row per layer: name, type, output shape (without batch), parameter count, SE role."""
    roles = se_roles(model)
    rows = [{"layer": l.name, "type": type(l).__name__, "output shape": _shape(l),
             "params": int(l.count_params()) if l.built else 0, "SE block": roles.get(l.name, "")}
            for l in model.layers]
    return pd.DataFrame(rows)
