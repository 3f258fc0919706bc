"""Extraction engine: one traced forward pass returns every tapped tensor, with the weights as arguments."""
from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from core.engine.reductions import Block, Reduced, positions_per_channel, reduce_groups, tap_groups, unpack
from core.engine.runtime import GraphFunction
from core.engine.se import SEBlock, build_graph, op_class
from core.engine.taps import Tap, VirtualLogits, list_tappable, tap_table


@dataclass(frozen=True)
class WeightValues:
    """Values of every model variable, in ``model.trainable_variables`` / ``non_trainable_variables`` order.

    Opaque to callers: make it with ``Extractor.weights_from_model`` or ``weights_from_mapping``.
    """

    trainable: tuple[tf.Tensor, ...]
    non_trainable: tuple[tf.Tensor, ...]
    paths: tuple[str, ...]


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
    ``trace_count`` counts Python traces of all compiled functions (each is traced on first use);
    it stays 1 across checkpoints and batch sizes for ``run``.
    """

    def __init__(self, model: keras.Model, taps: list[str] | None = None,
                 batch_size_hint: int | None = None) -> None:
        self.model = model
        graph, blocks, table, sources = tap_table(model)
        model = graph.model  # the Functional view: same variables, a graph to tap (Sequential, nested...)
        self._view = model
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
        self._forward: Any = None  # traced on first ``run``: a sweep needs only ``run_reduced``'s function
        self._forward_train: Any = None
        self._grad_fns: dict[bool, Any] = {}
        self._reduced_fns: dict[tuple[str, ...], tuple[Any, list[Block]]] = {}
        self._reduced_ran: set[tuple[str, ...]] = set()  # executed at least once
        self._tap_positions = {t.name: positions_per_channel(t.shape) for t in table}
        shape = {t.name: t.shape for t in table}
        # layout of run_reduced's stacked statistics: tap i owns columns offsets[i]:offsets[i + 1]
        self._red_offsets = np.concatenate([[0], np.cumsum([int(shape[t][-1]) for t in self.taps])]).astype(np.int64)
        self._red_totals = np.array([self._tap_positions[t] for t in self.taps], np.int64)
        self._red_offsets.flags.writeable = self._red_totals.flags.writeable = False  # shared by every result
        if batch_size_hint:
            # the first execution of a fresh graph pays for its set-up (placement, kernels); pay it now
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
            if isinstance(src, VirtualLogits):
                bias = getattr(src.layer, "bias", None) if getattr(src.layer, "use_bias", False) else None
                virtual[name] = (output_slot(src.input_tensor), var_index[id(src.layer.kernel)],
                                 var_index[id(bias)] if bias is not None else None, src.out_shape)
            else:
                real[name] = output_slot(src)
        return {"tensors": tensors, "real": real, "virtual": virtual}

    # ---- compiled functions --------------------------------------------------------------------

    def prepare(self) -> None:
        """Trace ``run``'s function now (it is otherwise traced on the first ``run``), e.g. under a spinner."""
        self._forward_fn()

    def _forward_fn(self) -> Any:
        with self._lock:  # trace once, never concurrently from callers' threads
            if self._forward is None:
                self._forward = GraphFunction(self._forward_body(training=False),
                                              [*self._weight_spec, self._x_spec])
        return self._forward

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
        scanning it again in numpy: the sweep then costs about one forward pass. Taps of one
        shape are reduced together (``core.engine.reductions.tap_groups``), which keeps the
        graph small, and their small results are put in tap order in numpy.
        """
        raw = tuple(t for t in raw if t in self.taps)
        fn, blocks = self._reduced_fn(raw)
        trainable, non_trainable, xt = self._prepare(weights, x)
        stats, raws = fn(trainable, non_trainable, xt)
        self._reduced_ran.add(raw)
        arrays, totals = unpack([v.numpy() for v in stats], blocks, int(xt.shape[0]), self._red_offsets,
                                self._red_totals)
        red = Reduced(tuple(self.taps), self._red_offsets, totals, arrays)
        return red, {name: v.numpy() for name, v in zip(raw, raws)}

    def prepare_reduced(self, raw: Sequence[str] = ()) -> None:
        """Trace ``run_reduced``'s function for ``raw`` now (it is otherwise traced on first use)."""
        self._reduced_fn(tuple(t for t in raw if t in self.taps))

    def reduced_traced(self, raw: Sequence[str] = ()) -> bool:
        """Whether ``run_reduced``'s function for ``raw`` is traced."""
        with self._lock:
            return tuple(t for t in raw if t in self.taps) in self._reduced_fns

    def warm_reduced(self, raw: Sequence[str] = (), batch: int = 1) -> None:
        """Run ``run_reduced``'s function once on ``batch`` zero images, unless it has run.

        Its first execution pays for the graph's set-up (placement, oneDNN's rewrites, kernels) at that
        batch size, mostly outside the Python interpreter: while a slow read holds the
        interpreter in another thread, this takes that cost off the first real pass (and
        computes the network once more). The model's own variable values serve as weights:
        any of the right shapes do.
        """
        raw = tuple(t for t in raw if t in self.taps)
        fn, _blocks = self._reduced_fn(raw)
        with self._lock:
            if raw in self._reduced_ran:
                return
            self._reduced_ran.add(raw)
        own = [tf.convert_to_tensor(v.numpy()) for v in self._vars]
        zero = tf.zeros((batch, *self._x_spec.shape[1:]), self._x_spec.dtype)
        fn(own[:len(self._train_vars)], own[len(self._train_vars):], zero)

    def _reduced_fn(self, raw: tuple[str, ...]) -> tuple[Any, list[Block]]:
        """``run_reduced``'s traced function for ``raw`` and the layout of its statistics (traced on first use)."""
        with self._lock:
            got = self._reduced_fns.get(raw)
            if got is None:
                blocks: list[Block] = []
                fn = GraphFunction(self._reduced_body(raw, blocks), [*self._weight_spec, self._x_spec])
                got = self._reduced_fns[raw] = (fn, blocks)
            return got

    def _reduced_body(self, raw: tuple[str, ...], blocks: list[Block]) -> Any:
        """The traced function of ``run_reduced``; fills ``blocks`` (``reduce_groups``' layout) when traced."""
        forward = self._forward_body(training=False)

        def body(trainable, non_trainable, x):
            outs = forward(trainable, non_trainable, x)
            by_name = dict(zip(self.taps, outs))
            stats, blocks[:] = reduce_groups(outs, tap_groups([tuple(t.shape) for t in outs]))
            return stats, [by_name[n] for n in raw]

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
        return self._call(self._forward_fn(), weights, x)

    def run_used(self, mapping: Mapping[str, Any], x: np.ndarray) -> dict[str, np.ndarray]:
        """``run`` with checkpoint arrays keyed by ``variable.path``, of which only ``used_paths`` are read.

        Its traced function takes only those variables: for an early tap two tensors instead of
        all of the model's, each of which the call must bind (for a first-layer tap that binding is
        most of the call). Errors as ``weights_from_mapping``.
        """
        with self._lock:
            if self._used_fn is None:
                spec = [tf.TensorSpec(self._vars[i].shape, self._vars[i].dtype) for i in self._used]

                def body(used: list[tf.Tensor], x: tf.Tensor) -> list[tf.Tensor]:
                    values: list[tf.Tensor | None] = [None] * len(self._vars)
                    for i, t in zip(self._used, used):
                        values[i] = t
                    return self._forward_values(values, x, training=False)

                self._used_fn = GraphFunction(body, [spec, self._x_spec])
        outs = self._used_fn(self._values(mapping, self._used), self._input_batch(x))
        return {name: o.numpy() for name, o in zip(self.taps, outs)}

    def run_training_mode(self, weights: WeightValues, x: np.ndarray) -> dict[str, np.ndarray]:
        """Like ``run`` with ``training=True`` (BatchNorm uses batch statistics); state is not updated."""
        with self._lock:
            if self._forward_train is None:
                self._forward_train = GraphFunction(self._forward_body(training=True),
                                                    [*self._weight_spec, self._x_spec])
        return self._call(self._forward_train, weights, x)

    def _output_is_probability(self) -> bool:
        """True when the model ends in a softmax (then the loss takes probabilities, not logits)."""
        graph = build_graph(self.model)
        out = self._view.outputs[0]
        op = graph.producer.get(id(out))
        act = getattr(op, "activation", None)
        return getattr(act, "__name__", "") == "softmax" or isinstance(op, keras.layers.Softmax) or (
            op is not None and not isinstance(op, keras.layers.Layer) and op_class(op) == "softmax")

    def _gradient_fn(self, training: bool) -> Any:
        with self._lock:
            if training in self._grad_fns:
                return self._grad_fns[training]
            if len(self._view.outputs) != 1:
                raise ValueError("gradients need a single-output classification model")
            from_probs = self._output_is_probability()
            y_spec = tf.TensorSpec((None,), tf.int64)

            def body(trainable, non_trainable, x, y):
                self.trace_count += 1
                trainable = list(trainable)
                with tf.GradientTape() as tape:
                    tape.watch(trainable)
                    out, _ = self._view.stateless_call(trainable, list(non_trainable), x, training=training)
                    loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                        y, out, from_logits=not from_probs))
                grads = tape.gradient(loss, trainable)
                # a variable off the loss path has no gradient; report it as 0
                return loss, [tf.norm(g) if g is not None else tf.constant(0.0) for g in grads]

            fn = GraphFunction(body, [*self._weight_spec, self._x_spec, y_spec])
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
