"""Extraction engine: one traced forward pass returns every tapped tensor, with the weights as arguments."""
from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

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


#: Statistics ``Extractor.run_reduced`` computes in the graph, per probe and channel.
REDUCED_KEYS = ("s", "m2", "abs_sum", "min", "max", "n_zero")


def _positions(shape: tuple[int | None, ...]) -> int:
    """Positions per (probe, channel) of a tap of shape (None, ..., C)."""
    p = 1
    for d in shape[1:-1]:
        p *= int(d) if d is not None else 1
    return p


#: Per-probe size (positions x channels) from which sums run as matrix products and min/max as
#: pooling: oneDNN's kernels are 2-3x faster than TensorFlow's middle-axis reductions on large
#: maps, slower on small ones (bench/bench_sweep.py: -20 % forward time at 224 px, none at 64 px).
LARGE_TAP = 32768


def _reduce_tap(t: tf.Tensor) -> list[tf.Tensor]:
    """(N, ..., C) -> per (N, C), in ``REDUCED_KEYS`` order: sum, M2, |x| sum, min, max, zeros.

    Assumes finite values (cheap passes, small graph). A NaN or Inf makes the sum
    non-finite; ``Extractor.run_reduced`` callers detect that and recompute the tap
    from raw values with ``core.analysis.stats.moments``, which masks them.
    """
    t = tf.cast(t, tf.float32)
    dims = t.shape[1:]
    n, c = tf.shape(t)[0], tf.shape(t)[-1]
    if dims.is_fully_defined() and len(dims) >= 1:
        p, width = int(np.prod(dims[:-1], dtype=np.int64)), int(dims[-1])
        if p == 1:  # one value per channel (dense, pooled, SE gates): the statistics are the value
            v = tf.reshape(t, tf.stack([n, c]))
            a = tf.abs(v)
            return [v, tf.zeros_like(v), a, v, v, 1.0 - tf.sign(a)]
        if p * width >= LARGE_TAP:
            return _reduce_large(t, p, width)
    t = tf.reshape(t, tf.stack([n, -1, c]))
    p = tf.cast(tf.shape(t)[1], tf.float32)
    s = tf.reduce_sum(t, axis=1)
    a = tf.abs(t)
    # squared_difference is one fused kernel; sign(|x|) counts non-zeros without a bool tensor
    return [s, tf.reduce_sum(tf.math.squared_difference(t, (s / p)[:, None, :]), axis=1),
            tf.reduce_sum(a, axis=1), tf.reduce_min(t, axis=1), tf.reduce_max(t, axis=1),
            p - tf.reduce_sum(tf.sign(a), axis=1)]


def _reduce_large(t: tf.Tensor, p: int, c: int) -> list[tf.Tensor]:
    """``_reduce_tap`` for a tap with ``p`` positions and ``c`` channels per probe, both static and large.

    Sums are a product with a row of ones, (1, 1, P) @ (N, P, C); min and max are one
    max-pooling window over all positions.
    """
    n = tf.shape(t)[0]
    t3 = tf.reshape(t, tf.stack([n, p, c]))
    t4 = tf.reshape(t, tf.stack([n, p, 1, c]))
    ones = tf.ones((1, 1, p), tf.float32)

    def total(u: tf.Tensor) -> tf.Tensor:
        return tf.matmul(ones, u)[:, 0, :]

    def peak(u: tf.Tensor) -> tf.Tensor:
        return tf.reshape(tf.nn.max_pool2d(u, (p, 1), (p, 1), "VALID"), tf.stack([n, c]))

    s = total(t3)
    a = tf.abs(t3)
    return [s, total(tf.math.squared_difference(t3, (s / p)[:, None, :])), total(a), -peak(-t4), peak(t4),
            p - total(tf.sign(a))]


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous
class Reduced:
    """Per-channel statistics of every tap, stacked along the channel axis (finite tensors only).

    ``arrays[k]`` for k in ``REDUCED_KEYS`` is float32 (N, ΣC); tap ``taps[i]`` owns columns
    ``offsets[i]:offsets[i + 1]`` and has ``totals[i]`` positions per channel.
    """

    taps: tuple[str, ...]
    offsets: np.ndarray  # int64 (T + 1,)
    totals: np.ndarray  # int64 (T,)
    arrays: dict[str, np.ndarray]

    def columns(self, tap: str) -> slice:
        i = self.taps.index(tap)
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))


@dataclass(frozen=True)
class Tap:
    """One tappable tensor: ``shape`` has the batch dimension as None; ``default`` marks default taps."""

    name: str
    shape: tuple[int | None, ...]
    kind: str
    op_class: str
    default: bool


@dataclass(frozen=True)
class WeightValues:
    """Values of every model variable, in ``model.trainable_variables`` / ``non_trainable_variables`` order.

    Opaque to callers: make it with ``Extractor.weights_from_model`` or ``weights_from_mapping``.
    """

    trainable: tuple[tf.Tensor, ...]
    non_trainable: tuple[tf.Tensor, ...]
    paths: tuple[str, ...]


@dataclass(frozen=True)
class _VirtualLogits:
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


def _virtual_logits(graph: Graph, block: SEBlock) -> _VirtualLogits | None:
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
    return _VirtualLogits(block.logits_tap, layer, ins[0], out_shape)


def _tap_table(model: keras.Model) -> tuple[Graph, list[SEBlock], list[Tap], dict[str, Any]]:
    """(graph, SE blocks, taps in graph order, tap name -> KerasTensor or _VirtualLogits)."""
    graph = build_graph(model)
    blocks = se_blocks_of(graph)
    se_kinds = _se_kinds(blocks)
    virtual = {v.layer.name: v for v in (_virtual_logits(graph, b) for b in blocks) if v is not None}
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
        sources[name] = out
    return graph, blocks, taps, sources


def list_tappable(model: keras.Model) -> list[Tap]:
    """Every tappable tensor of ``model`` (single-output ops plus SE virtual logits), graph order."""
    return _tap_table(model)[2]


def default_taps(model: keras.Model) -> list[str]:
    """Conv, activation, merge-add, Dense and SE (gate, logits, hidden, excite) tap names, graph order."""
    return [t.name for t in list_tappable(model) if t.default]


def _check_names(requested: Sequence[str], valid: Sequence[str]) -> None:
    known = set(valid)
    unknown = [n for n in requested if n not in known]
    if unknown:
        raise KeyError(f"unknown layer name(s) {unknown}; valid names: {list(valid)}")


def _single_input(model: keras.Model) -> keras.KerasTensor:
    inputs = model.inputs
    if inputs is None or len(inputs) != 1:
        raise ValueError(f"model {model.name!r} must have exactly one input, has {len(inputs or [])}")
    return inputs[0]


def _state_only(model: keras.Model) -> set[int]:
    """ids of variables that are state but not weights (RNG seeds, metrics): never in checkpoints."""
    weight_ids = {id(w) for w in model.weights}
    return {id(v) for v in model.variables if id(v) not in weight_ids}


class Extractor:
    """Traced multi-output forward pass of one architecture; checkpoints are passed in as ``WeightValues``.

    Thread-safe: ``run`` touches no shared mutable state (weights are arguments of the
    traced function), so threads may extract different checkpoints concurrently.
    ``trace_count`` counts Python traces of all compiled functions; it stays 1 across
    checkpoints and batch sizes for ``run``.
    """

    def __init__(self, model: keras.Model, taps: list[str] | None = None,
                 batch_size_hint: int | None = None) -> None:
        self.model = model
        _graph, blocks, table, sources = _tap_table(model)
        self.se_blocks: list[SEBlock] = blocks
        self.tappable: list[Tap] = table
        names = [t.name for t in table]
        self.taps: list[str] = [t.name for t in table if t.default] if taps is None else list(dict.fromkeys(taps))
        _check_names(self.taps, names)
        if not self.taps:
            raise ValueError("no taps to extract; pass at least one name from list_tappable(model)")
        self.trace_count = 0
        self._lock = threading.Lock()
        self._input = _single_input(model)
        self._train_vars = list(model.trainable_variables)
        self._state_vars = list(model.non_trainable_variables)
        self._vars = self._train_vars + self._state_vars  # every variable, in WeightValues order
        self._paths = tuple(v.path for v in self._vars)
        self._var_index = {id(v): i for i, v in enumerate(self._vars)}
        self._state_only = _state_only(model)
        self._plan = self._plan_outputs(sources)
        self._submodel = keras.Model(self._input, self._plan["tensors"], name=f"{model.name}_taps")
        sub_vars = self._submodel.trainable_variables + self._submodel.non_trainable_variables
        self._sub_index = [self._var_index[id(v)] for v in sub_vars]
        used = set(self._sub_index) | {i for _, k, b, _ in self._plan["virtual"].values() for i in (k, b)
                                        if i is not None}
        self._used = sorted(used)
        #: Paths of the variables the taps depend on: the only ones ``run_used`` reads.
        self.used_paths: frozenset[str] = frozenset(self._paths[i] for i in used)
        self._used_fn: Any = None
        self._n_sub_train = len(self._submodel.trainable_variables)
        self._weight_spec = (
            [tf.TensorSpec(v.shape, v.dtype) for v in self._train_vars],
            [tf.TensorSpec(v.shape, v.dtype) for v in self._state_vars],
        )
        self._x_spec = tf.TensorSpec((None, *self._input.shape[1:]), self._input.dtype)
        self._forward = self._compile(self._forward_body(training=False))
        self._forward_train: Any = None
        self._grad_fns: dict[bool, Any] = {}
        self._reduced_fns: dict[tuple[str, ...], Any] = {}
        self._tap_positions = {t.name: _positions(t.shape) for t in table}
        shape = {t.name: t.shape for t in table}
        # layout of run_reduced's stacked statistics: tap i owns columns offsets[i]:offsets[i + 1]
        self._red_offsets = np.concatenate([[0], np.cumsum([int(shape[t][-1]) for t in self.taps])]).astype(np.int64)
        self._red_totals = np.array([self._tap_positions[t] for t in self.taps], np.int64)
        self._red_offsets.flags.writeable = self._red_totals.flags.writeable = False  # shared by every result
        if batch_size_hint:
            # the first execution of a fresh graph pays for graph optimisation; pay it now
            zeros = np.zeros((batch_size_hint, *self._input.shape[1:]), "float32")
            self.run(self.weights_from_model(model), zeros)

    # ---- plan ---------------------------------------------------------------------------------

    def _plan_outputs(self, sources: Mapping[str, Any]) -> dict[str, Any]:
        """Unique sub-model output tensors and, per tap, where its value comes from."""
        tensors: list[keras.KerasTensor] = []
        slot: dict[int, int] = {}

        def output_slot(t: keras.KerasTensor) -> int:
            if id(t) not in slot:
                slot[id(t)] = len(tensors)
                tensors.append(t)
            return slot[id(t)]

        real: dict[str, int] = {}
        virtual: dict[str, tuple[int, int, int | None, tuple[int, ...]]] = {}
        var_index = self._var_index
        for name in self.taps:
            src = sources[name]
            if isinstance(src, _VirtualLogits):
                bias = getattr(src.layer, "bias", None) if getattr(src.layer, "use_bias", False) else None
                virtual[name] = (output_slot(src.input_tensor), var_index[id(src.layer.kernel)],
                                 var_index[id(bias)] if bias is not None else None, src.out_shape)
            else:
                real[name] = output_slot(src)
        return {"tensors": tensors, "real": real, "virtual": virtual}

    # ---- compiled functions --------------------------------------------------------------------

    def _compile(self, body: Any) -> Any:
        fn = tf.function(body, input_signature=[*self._weight_spec, self._x_spec], autograph=False)
        with self._lock:
            fn.get_concrete_function()  # trace now, never concurrently from callers' threads
        return fn

    def _forward_values(self, values: Sequence[tf.Tensor | None], x: tf.Tensor, training: bool) -> list[tf.Tensor]:
        """The taps from ``values`` (one per variable; only those of ``used_paths`` are read) while tracing."""
        self.trace_count += 1  # Python side effect: runs only while tracing
        plan, n_train = self._plan, self._n_sub_train
        sub = [values[i] for i in self._sub_index]
        outs, _new_state = self._submodel.stateless_call(sub[:n_train], sub[n_train:], x, training=training)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        # _new_state dropped: moving statistics are never updated
        return [outs[plan["real"][name]] if name in plan["real"] else self._logits(values, outs, name)
                for name in self.taps]

    def _forward_body(self, training: bool) -> Any:
        def body(trainable: list[tf.Tensor], non_trainable: list[tf.Tensor], x: tf.Tensor) -> list[tf.Tensor]:
            return self._forward_values(list(trainable) + list(non_trainable), x, training)

        return body

    def run_reduced(self, weights: WeightValues, x: np.ndarray, raw: Sequence[str] = ()
                    ) -> tuple[Reduced, dict[str, np.ndarray]]:
        """Per-channel statistics of every tap, reduced inside the traced graph, plus raw values of ``raw``.

        Returns (``Reduced`` with (N, ΣC) arrays, {tap: raw value} for the taps in ``raw``).
        Values are exact only for finite tensors: a tap whose ``s`` is not finite must be
        recomputed from raw values (``core.analysis.sweep`` does this).
        Reducing in the graph avoids copying every feature map out of TensorFlow and
        scanning it again in numpy, and stacking the taps in the graph returns six
        arrays instead of six per tap: the sweep then costs about one forward pass.
        """
        raw = tuple(t for t in raw if t in self.taps)
        with self._lock:
            fn = self._reduced_fns.get(raw)
            if fn is None:
                fn = tf.function(self._reduced_body(raw), input_signature=[*self._weight_spec, self._x_spec],
                                 autograph=False)
                fn.get_concrete_function()
                self._reduced_fns[raw] = fn
        stacked, raws = fn(*self._prepare(weights, x))
        red = Reduced(tuple(self.taps), self._red_offsets, self._red_totals,
                      {k: v.numpy() for k, v in zip(REDUCED_KEYS, stacked)})
        return red, {name: v.numpy() for name, v in zip(raw, raws)}

    def _reduced_body(self, raw: tuple[str, ...]) -> Any:
        forward = self._forward_body(training=False)

        def body(trainable, non_trainable, x):
            outs = forward(trainable, non_trainable, x)
            by_name = dict(zip(self.taps, outs))
            per_tap = [_reduce_tap(t) for t in outs]
            stacked = [tf.concat([r[k] for r in per_tap], axis=1) for k in range(len(REDUCED_KEYS))]
            return stacked, [by_name[n] for n in raw]

        return body

    def _logits(self, values: list[tf.Tensor], outs: list[tf.Tensor], name: str) -> tf.Tensor:
        slot, k_idx, b_idx, out_shape = self._plan["virtual"][name]
        inp, kernel = outs[slot], values[k_idx]
        c_in, c_out = kernel.shape[-2], kernel.shape[-1]
        y = tf.matmul(tf.reshape(inp, (-1, c_in)), tf.reshape(kernel, (c_in, c_out)))
        if b_idx is not None:
            y = y + values[b_idx]
        return tf.reshape(y, (-1, *out_shape))

    # ---- weights -------------------------------------------------------------------------------

    def weights_from_mapping(self, mapping: Mapping[str, Any]) -> WeightValues:
        """Checkpoint arrays keyed by ``variable.path`` -> ``WeightValues``.

        RNG/metric state (not saved in checkpoints) falls back to the model's own values.
        Raises ValueError listing every missing or shape-mismatched variable.
        """
        values = self._values(mapping, range(len(self._paths)))
        n = len(self._train_vars)
        return WeightValues(tuple(values[:n]), tuple(values[n:]), self._paths)

    def _values(self, mapping: Mapping[str, Any], indices: Iterable[int]) -> list[tf.Tensor]:
        """Tensors of the variables at ``indices`` from ``mapping``; ValueError naming every missing or misfit one."""
        missing, mismatched, values = [], [], []
        for i in indices:
            v = self._vars[i]
            if v.path not in mapping:
                if id(v) in self._state_only:
                    values.append(tf.convert_to_tensor(v.numpy()))
                else:
                    missing.append(v.path)
                continue
            a = np.asarray(mapping[v.path])
            if tuple(a.shape) != tuple(v.shape):
                mismatched.append(f"{v.path}: expected {tuple(v.shape)}, got {tuple(a.shape)}")
                continue
            values.append(tf.convert_to_tensor(a, dtype=v.dtype))
        if missing or mismatched:
            raise ValueError(
                f"weights do not fit model {self.model.name!r}: "
                + (f"missing {len(missing)} variable(s) {missing}" if missing else "")
                + ("; " if missing and mismatched else "")
                + (f"shape mismatch {mismatched}" if mismatched else ""))
        return values

    def weights_from_model(self, model: keras.Model) -> WeightValues:
        """Snapshot of the variables of ``model`` (this architecture, any instance), matched by path."""
        return self.weights_from_mapping({v.path: v.numpy() for v in model.variables})

    # ---- running -------------------------------------------------------------------------------

    def _prepare(self, weights: WeightValues, x: np.ndarray) -> tuple[list, list, tf.Tensor]:
        if weights.paths != self._paths:
            raise ValueError("WeightValues were made for a different architecture; use this extractor's "
                             "weights_from_model / weights_from_mapping")
        return list(weights.trainable), list(weights.non_trainable), self._input_batch(x)

    def _input_batch(self, x: np.ndarray) -> tf.Tensor:
        x = np.asarray(x, dtype=self._x_spec.dtype.as_numpy_dtype)
        expected = tuple(self._x_spec.shape[1:])
        if x.ndim != len(expected) + 1 or any(e is not None and e != s for e, s in zip(expected, x.shape[1:])):
            raise ValueError(f"input batch must have shape (N, {', '.join(map(str, expected))}), got {x.shape}")
        return tf.convert_to_tensor(x)

    def _call(self, fn: Any, weights: WeightValues, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = fn(*self._prepare(weights, x))
        return {name: o.numpy() for name, o in zip(self.taps, outs)}

    def run(self, weights: WeightValues, x: np.ndarray) -> dict[str, np.ndarray]:
        """Inference-mode values of every tap. x: float32 (N, H, W, C) -> {tap: (N, ...)}."""
        return self._call(self._forward, weights, x)

    def run_used(self, mapping: Mapping[str, Any], x: np.ndarray) -> dict[str, np.ndarray]:
        """``run`` with checkpoint arrays keyed by ``variable.path``, of which only ``used_paths`` are read.

        Its traced function takes only those variables: for an early tap two tensors instead of
        all of the model's, each of which costs the call ~15 us to bind (the whole call of a
        first-layer tap on the demo net: 0.6 ms instead of 1.4). Errors as ``weights_from_mapping``.
        """
        with self._lock:
            if self._used_fn is None:
                spec = [tf.TensorSpec(self._vars[i].shape, self._vars[i].dtype) for i in self._used]

                def body(used: list[tf.Tensor], x: tf.Tensor) -> list[tf.Tensor]:
                    values: list[tf.Tensor | None] = [None] * len(self._vars)
                    for i, t in zip(self._used, used):
                        values[i] = t
                    return self._forward_values(values, x, training=False)

                self._used_fn = tf.function(body, input_signature=[spec, self._x_spec], autograph=False)
                self._used_fn.get_concrete_function()
        outs = self._used_fn(self._values(mapping, self._used), self._input_batch(x))
        return {name: o.numpy() for name, o in zip(self.taps, outs)}

    def run_training_mode(self, weights: WeightValues, x: np.ndarray) -> dict[str, np.ndarray]:
        """Like ``run`` with ``training=True`` (BatchNorm uses batch statistics); state is not updated."""
        with self._lock:
            if self._forward_train is None:
                fn = tf.function(self._forward_body(training=True),
                                 input_signature=[*self._weight_spec, self._x_spec], autograph=False)
                fn.get_concrete_function()
                self._forward_train = fn
        return self._call(self._forward_train, weights, x)

    def _output_is_probability(self) -> bool:
        """True when the model ends in a softmax (then the loss takes probabilities, not logits)."""
        graph = build_graph(self.model)
        out = self.model.outputs[0]
        op = graph.producer.get(id(out))
        act = getattr(op, "activation", None)
        return getattr(act, "__name__", "") == "softmax" or isinstance(op, keras.layers.Softmax) or (
            op is not None and not isinstance(op, keras.layers.Layer) and op_class(op) == "softmax")

    def _gradient_fn(self, training: bool) -> Any:
        with self._lock:
            if training in self._grad_fns:
                return self._grad_fns[training]
            if len(self.model.outputs) != 1:
                raise ValueError("gradients need a single-output classification model")
            from_probs = self._output_is_probability()
            y_spec = tf.TensorSpec((None,), tf.int64)

            def body(trainable, non_trainable, x, y):
                self.trace_count += 1
                trainable = list(trainable)
                with tf.GradientTape() as tape:
                    tape.watch(trainable)
                    out, _ = self.model.stateless_call(trainable, list(non_trainable), x, training=training)
                    loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                        y, out, from_logits=not from_probs))
                grads = tape.gradient(loss, trainable)
                # a variable off the loss path has no gradient; report it as 0
                return loss, [tf.norm(g) if g is not None else tf.constant(0.0) for g in grads]

            fn = tf.function(body, input_signature=[*self._weight_spec, self._x_spec, y_spec], autograph=False)
            fn.get_concrete_function()
            self._grad_fns[training] = fn
            return fn

    def gradients(self, weights: WeightValues, x: np.ndarray, y: np.ndarray,
                  training: bool = False) -> dict[str, float]:
        """L2 norm of d(mean sparse-categorical CE)/d(variable) per trainable ``variable.path``.

        x: (N, H, W, C) probes, y: int (N,) labels. ``training`` selects BatchNorm/Dropout mode.
        """
        fn = self._gradient_fn(training)
        trainable, non_trainable, xt = self._prepare(weights, x)
        _loss, norms = fn(trainable, non_trainable, xt, tf.convert_to_tensor(np.asarray(y, dtype=np.int64)))
        return {v.path: float(n) for v, n in zip(self._train_vars, norms)}


def activations(model: keras.Model, x: np.ndarray, layers: str | Sequence[str] | None = None
                ) -> dict[str, np.ndarray]:
    """keract-style ``{layer name: output}`` for ``model`` on ``x`` with its current weights.

    layers None -> every tappable tensor. Unknown names raise KeyError listing valid names.
    One-off use; build an ``Extractor`` to extract many checkpoints.
    """
    names = [layers] if isinstance(layers, str) else (None if layers is None else list(layers))
    if names is None:
        names = [t.name for t in list_tappable(model)]
    ex = Extractor(model, names)
    return ex.run(ex.weights_from_model(model), x)
