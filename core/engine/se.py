"""Find squeeze-and-excitation blocks in any Keras model by graph structure, not by names."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from core.engine.graph import Graph, build_graph  # noqa: F401  (re-exported)

# Op classes (Keras layers or `keras.ops` nodes) are recognised by class name so that
# elementary ops, whose classes live in private modules, need no private import.
ACTIVATION_OP_CLASSES = frozenset({
    "relu", "relu6", "sigmoid", "hardsigmoid", "silu", "swish", "hardsilu", "hardswish",
    "gelu", "elu", "selu", "celu", "softmax", "logsoftmax", "leakyrelu", "tanh", "softplus",
    "softsign", "logsigmoid", "sparsesigmoid", "hardtanh", "glu", "squareplus", "sparseplus",
})
SIGMOID_NAMES = frozenset({"sigmoid", "hard_sigmoid", "hardsigmoid", "sparse_sigmoid"})
# Ops that only move values around: the gate seen through them is still the gate.
SHAPE_OP_CLASSES = frozenset({"reshape", "flatten", "expanddims", "squeeze", "permute", "identity"})
# Elementwise ops a composite gate (e.g. hard sigmoid relu6(x + 3) / 6) may be made of.
ELEMENTWISE_OP_CLASSES = ACTIVATION_OP_CLASSES | frozenset({
    "add", "subtract", "multiply", "divide", "truedivide", "clip", "minimum", "maximum",
    "activation", "rescaling",
})
ACTIVATION_LAYERS = (
    keras.layers.Activation, keras.layers.ReLU, keras.layers.ELU, keras.layers.LeakyReLU,
    keras.layers.PReLU, keras.layers.Softmax,
)
KERNEL_LAYERS = (keras.layers.Dense, keras.layers.Conv2D, keras.layers.Conv1D, keras.layers.EinsumDense)
GLOBAL_POOL_LAYERS = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)
MAX_SQUEEZE_PATH = 16  # ops between pooling and Multiply; real SE paths have 3-8


@dataclass(frozen=True)
class SEBlock:
    """One SE block; every field but ``name``/``channels`` is a tap name (see ``Graph.names``).

    Tensor shapes (B = batch): ``spatial``/``excite`` (B, H, W, C); ``squeeze`` (B, C) or
    (B, 1, 1, C); ``hidden`` (B, R) or (B, 1, 1, R); ``gate``/``logits`` (B, C) or (B, 1, 1, C).
    ``logits`` is None when the gate nonlinearity lives inside a Dense/Conv layer; then
    ``gate_from_dense`` names that layer and the logits are ``input @ kernel + bias``.
    """

    name: str
    excite: str
    gate: str
    logits: str | None
    squeeze: str
    hidden: str | None
    channels: int
    spatial: str
    gate_from_dense: str | None = None

    @property
    def logits_tap(self) -> str:
        """Tap name of the logits: the tensor's name, or a virtual ``<dense>/logits`` tap."""
        return self.logits if self.logits is not None else f"{self.gate_from_dense}/logits"


def op_class(op: Any) -> str:
    """Lower-case class name without underscores: ``GlobalAveragePooling2D`` -> ``globalaveragepooling2d``."""
    return type(op).__name__.lower().replace("_", "")


def activation_name(op: Any) -> str | None:
    """Name of the activation an op applies (``relu``, ``sigmoid``…), None if linear or not an activation."""
    fn = getattr(op, "activation", None)
    if isinstance(op, KERNEL_LAYERS) or isinstance(op, keras.layers.Activation):
        name = getattr(fn, "__name__", None) if fn is not None else None
        return None if name in (None, "linear") else name
    if isinstance(op, ACTIVATION_LAYERS):
        return op_class(op)
    if not isinstance(op, keras.layers.Layer) and op_class(op) in ACTIVATION_OP_CLASSES:
        return op_class(op)
    return None


def is_kernel_op(op: Any) -> bool:
    return isinstance(op, KERNEL_LAYERS)


def is_multiply(op: Any) -> bool:
    return isinstance(op, keras.layers.Multiply) or (
        not isinstance(op, keras.layers.Layer) and op_class(op) == "multiply")


def _is_shape_op(op: Any) -> bool:
    return op_class(op) in SHAPE_OP_CLASSES


def _is_elementwise(op: Any, graph: Graph) -> bool:
    ins = graph.inputs[id(op)]
    return (op_class(op) in ELEMENTWISE_OP_CLASSES or isinstance(op, ACTIVATION_LAYERS)) and len(ins) == 1 \
        and tuple(ins[0].shape) == tuple(graph.outputs[id(op)].shape)


def _normalise_axes(axis: Any, rank: int) -> set[int]:
    axes = np.atleast_1d(np.asarray(axis if axis is not None else [], dtype=int))
    return {int(a) % rank for a in axes}


def is_global_pool(op: Any, graph: Graph) -> bool:
    """GlobalAverage/MaxPooling2D, or a ``mean``/``max`` op over axes (1, 2) of a (B, H, W, C) tensor."""
    if isinstance(op, GLOBAL_POOL_LAYERS):
        return getattr(op, "data_format", "channels_last") == "channels_last"
    if isinstance(op, keras.layers.Layer) or op_class(op) not in {"mean", "max", "amax"}:
        return False
    ins = graph.inputs[id(op)]
    if len(ins) != 1 or len(ins[0].shape) != 4:
        return False
    return _normalise_axes(getattr(op, "axis", None), 4) == {1, 2}


def _per_channel(t: keras.KerasTensor, c: int) -> bool:
    return tuple(t.shape[1:]) in ((1, 1, c), (c,))


def _squeeze_path(graph: Graph, start: Any, spatial: keras.KerasTensor, c: int) -> list[Any] | None:
    """Ops from a global pooling of ``spatial`` to ``start`` (inclusive), via per-channel tensors only.

    Depth-first backwards; returns [pool, ..., start] or None.
    """
    def walk(op: Any, depth: int) -> list[Any] | None:
        if is_global_pool(op, graph):
            ins = graph.inputs[id(op)]
            return [op] if ins and ins[0] is spatial else None
        if depth >= MAX_SQUEEZE_PATH:
            return None
        for t in graph.inputs[id(op)]:
            # stay on the squeeze path: a spatial tensor means we left it
            if not _per_channel(t, t.shape[-1]) or id(t) not in graph.producer:
                continue
            found = walk(graph.producer[id(t)], depth + 1)
            if found is not None:
                return [*found, op]
        return None

    return walk(start, 0)


def _block_name(graph: Graph, mul: Any, pool: Any) -> str:
    """Readable name from the Multiply (``block1_se_excite`` -> ``block1_se``) or the pooling; "" if auto-named."""
    name = graph.name(mul)
    for suffix in ("_excite", "excite", "_mul", "_multiply", "_scale"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)].rstrip("_")
    pool_name = graph.name(pool)
    for suffix in ("_squeeze", "_avg_pool", "_pool", "_gap"):
        if pool_name.endswith(suffix) and len(pool_name) > len(suffix):
            return pool_name[: -len(suffix)].rstrip("_")
    return ""


def _gate_and_logits(graph: Graph, path: list[Any]) -> tuple[Any, str | None, str | None, int]:
    """(gate op, logits tap, gate_from_dense, index in path of the first gate-chain op).

    The gate is the op whose output feeds the Multiply once shape-only ops are skipped.
    """
    i = len(path) - 1
    while i > 0 and _is_shape_op(path[i]):
        i -= 1
    gate = path[i]
    if is_kernel_op(gate):
        return gate, None, graph.name(gate), i
    # Walk back through the elementwise chain (one Activation, or MobileNetV3's
    # multiply <- relu6 <- add): the logits are the tensor that enters the chain.
    j = i
    while j > 1 and _is_elementwise(path[j - 1], graph) and not is_kernel_op(path[j - 1]):
        j -= 1
    return gate, graph.name(path[j - 1]), None, j


def _hidden(graph: Graph, path: list[Any], gate_chain_start: int) -> str | None:
    """Post-activation output of the first Dense/Conv after pooling, unless it is the gate's own layer."""
    for k, op in enumerate(path[1:gate_chain_start], start=1):
        if not is_kernel_op(op):
            continue
        if activation_name(op) is None and k + 1 < gate_chain_start and activation_name(path[k + 1]):
            return graph.name(path[k + 1])
        return graph.name(op)
    return None


def _match(graph: Graph, mul: Any) -> SEBlock | None:
    ins = graph.inputs[id(mul)]
    if len(ins) != 2:
        return None
    # Try both orders: at tiny inputs the spatial map may itself be (1, 1, C).
    for spatial, chan in ((ins[0], ins[1]), (ins[1], ins[0])):
        if len(spatial.shape) != 4 or not _per_channel(chan, spatial.shape[-1]):
            continue
        if id(chan) not in graph.producer or id(spatial) not in graph.producer:
            continue
        c = int(spatial.shape[-1])
        path = _squeeze_path(graph, graph.producer[id(chan)], spatial, c)
        if path is None or len(path) < 2:
            continue
        gate, logits, from_dense, chain_start = _gate_and_logits(graph, path)
        return SEBlock(
            name=_block_name(graph, mul, path[0]),
            excite=graph.name(mul),
            gate=graph.name(gate),
            logits=logits,
            squeeze=graph.name(path[0]),
            hidden=_hidden(graph, path, chain_start),
            channels=c,
            spatial=graph.name(graph.producer[id(spatial)]),
            gate_from_dense=from_dense,
        )
    return None


def iter_se_blocks(graph: Graph) -> Iterator[SEBlock]:
    for op in graph.ops:
        if is_multiply(op):
            block = _match(graph, op)
            if block is not None:
                yield block


def se_blocks_of(graph: Graph) -> list[SEBlock]:
    """Every SE block of an already built ``Graph`` in graph order; names are made unique."""
    blocks: list[SEBlock] = []
    used: set[str] = set()
    for k, b in enumerate(iter_se_blocks(graph), start=1):
        name = b.name or f"se{k}"
        while name in used:
            name = f"{name}_{k}"
        used.add(name)
        blocks.append(dataclasses.replace(b, name=name))
    return blocks


def find_se_blocks(model: keras.Model) -> list[SEBlock]:
    """Every SE block of ``model`` in graph order, found by structure.

    A block is a Multiply of a map (B, H, W, C) with a per-channel tensor (B, 1, 1, C) or (B, C)
    whose ancestry, through per-channel tensors only, reaches a global pooling of that same map.
    """
    return se_blocks_of(build_graph(model))


def per_channel(a: np.ndarray) -> np.ndarray:
    """(B, 1, 1, C) or (B, C) -> (B, C): gates, logits and squeeze values as one row per image."""
    return a.reshape(a.shape[0], a.shape[-1])
