"""Tappable tensors of a model: every single-output op plus the virtual logits of Dense/1x1-Conv SE gates."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras

from core.engine.se import (
    ACTIVATION_LAYERS, ACTIVATION_OP_CLASSES, Graph, SEBlock, build_graph, op_class, se_blocks_of,
)

CONV_LAYERS = (
    keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D, keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv2D, keras.layers.Conv2DTranspose,
)
NORM_LAYERS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization, keras.layers.GroupNormalization)
POOL_LAYERS = (
    keras.layers.MaxPooling2D, keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling2D,
)
DEFAULT_KINDS = frozenset({"conv", "activation", "add", "dense", "se_gate", "se_logits", "se_hidden", "se_excite"})
LOGITS_SUFFIX = "/logits"  # Keras forbids "/" in layer names, so virtual taps cannot clash


@dataclass(frozen=True)
class Tap:
    """One tappable tensor: ``shape`` has the batch dimension as None; ``default`` marks default taps."""

    name: str
    shape: tuple[int | None, ...]
    kind: str
    op_class: str
    default: bool


@dataclass(frozen=True)
class VirtualLogits:
    """Pre-activation of a Dense/1x1-Conv gate: ``input @ kernel + bias`` (the layer applies the sigmoid)."""

    name: str
    layer: Any
    input_tensor: keras.KerasTensor
    out_shape: tuple[int, ...]  # without batch


def _add_is_merge(op: Any, graph: Graph) -> bool:
    """An elementwise ``add`` op of two feature maps (a residual), not ``x + 3`` inside a hard sigmoid."""
    ins = graph.inputs[id(op)]
    return len(ins) == 2 and tuple(ins[0].shape) == tuple(ins[1].shape)


def _generic_kind(op: Any, graph: Graph) -> str:
    if isinstance(op, keras.layers.InputLayer):
        return "input"
    if isinstance(op, CONV_LAYERS):
        return "conv"
    if isinstance(op, keras.layers.Dense):
        return "dense"
    if isinstance(op, ACTIVATION_LAYERS) or (
            not isinstance(op, keras.layers.Layer) and op_class(op) in ACTIVATION_OP_CLASSES):
        return "activation"
    if isinstance(op, keras.layers.Add) or (
            not isinstance(op, keras.layers.Layer) and op_class(op) == "add" and _add_is_merge(op, graph)):
        return "add"
    if isinstance(op, NORM_LAYERS):
        return "norm"
    if isinstance(op, POOL_LAYERS):
        return "pool"
    return "other"


def _se_kinds(blocks: Sequence[SEBlock]) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for b in blocks:
        kinds[b.squeeze] = "se_squeeze"
        if b.hidden:
            kinds[b.hidden] = "se_hidden"
        kinds[b.logits_tap] = "se_logits"
        kinds[b.gate] = "se_gate"
        kinds[b.excite] = "se_excite"
    return kinds


def _virtual_logits(graph: Graph, block: SEBlock) -> VirtualLogits | None:
    """Describe how to compute a Dense-gate's logits; None when the layer is not a plain matmul."""
    if block.gate_from_dense is None:
        return None
    layer = graph.op_named(block.gate_from_dense)
    kernel = getattr(layer, "kernel", None)
    ins = graph.inputs[id(layer)]
    if not isinstance(kernel, keras.Variable) or len(ins) != 1:
        return None
    k_shape = tuple(kernel.shape)
    is_matmul = len(k_shape) == 2 or (
        isinstance(layer, keras.layers.Conv2D) and k_shape[:2] == (1, 1)
        and getattr(layer, "groups", 1) == 1 and tuple(ins[0].shape[1:3]) == (1, 1))
    if not is_matmul:
        return None
    out_shape = tuple(int(d) for d in graph.outputs[id(layer)].shape[1:])
    return VirtualLogits(block.logits_tap, layer, graph.top(ins[0]), out_shape)


def tap_table(model: keras.Model) -> tuple[Graph, list[SEBlock], list[Tap], dict[str, Any]]:
    """(graph, SE blocks, taps in graph order, tap name -> KerasTensor or VirtualLogits)."""
    graph = build_graph(model)
    blocks = se_blocks_of(graph)
    se_kinds = _se_kinds(blocks)
    virtual = {graph.name(v.layer): v for v in (_virtual_logits(graph, b) for b in blocks) if v is not None}
    taps: list[Tap] = []
    sources: dict[str, Any] = {}
    for op in graph.ops:
        name = graph.name(op)
        if name in virtual:  # logits just before the gate they feed
            v = virtual[name]
            taps.append(Tap(v.name, (None, *v.out_shape), "se_logits", "Logits", True))
            sources[v.name] = v
        out = graph.outputs[id(op)]
        kind = se_kinds.get(name) or _generic_kind(op, graph)
        taps.append(Tap(name, tuple(out.shape), kind, type(op).__name__, kind in DEFAULT_KINDS))
        sources[name] = graph.top(out)
    return graph, blocks, taps, sources


def list_tappable(model: keras.Model) -> list[Tap]:
    """Every tappable tensor of ``model`` (single-output ops plus SE virtual logits), graph order."""
    return tap_table(model)[2]


def default_taps(model: keras.Model) -> list[str]:
    """Conv, activation, merge-add, Dense and SE (gate, logits, hidden, excite) tap names, graph order."""
    return [t.name for t in list_tappable(model) if t.default]
