"""One op graph for every Keras model shape: Functional, Sequential, traceable subclassed, nested models.

Taps inside a nested model (a ``keras.applications`` backbone used as a layer) are named
``outer/inner_layer``. Their tensors live in the nested model's own graph; ``Graph.top``
lifts them into the graph of the model's input, where an extraction sub-model can reach them.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import keras

NESTED_SEP = "/"


class ModelGraphError(ValueError):
    """The model has no graph that can be traced (e.g. an unbuilt Sequential, a subclassed model
    whose ``call`` is not made of Keras layers and ops)."""


@dataclass(frozen=True)
class Graph:
    """Read-only view of a model's op graph, nested models expanded.

    ``names`` maps ``id(op)`` to a unique tap name (the op's name, ``outer/inner`` inside a nested
    model; duplicates get ``:k``). Ops called more than once (shared layers) have no single output
    and are left out. ``inputs``/``outputs`` hold each op's tensors in its own (possibly nested)
    graph; ``top(t)`` is the same value as a tensor of ``model``'s graph.
    """

    model: keras.Model  # the Functional the tensors of ``top`` belong to
    ops: tuple[Any, ...]
    names: dict[int, str]
    producer: dict[int, Any]
    inputs: dict[int, tuple[keras.KerasTensor, ...]]
    outputs: dict[int, keras.KerasTensor]
    lifted: dict[int, keras.KerasTensor]

    def name(self, op: Any) -> str:
        return self.names[id(op)]

    def input_ops(self, op: Any) -> list[Any]:
        return [self.producer[id(t)] for t in self.inputs[id(op)] if id(t) in self.producer]

    def op_named(self, name: str) -> Any:
        for op in self.ops:
            if self.names[id(op)] == name:
                return op
        raise KeyError(name)

    def top(self, t: keras.KerasTensor) -> keras.KerasTensor:
        """``t`` as a tensor of ``model``'s own graph (itself unless it lives in a nested model)."""
        return self.lifted.get(id(t), t)

    def layers(self) -> list[tuple[str, keras.layers.Layer]]:
        """(tap name, layer) of every Keras layer in graph order, nested models' layers included."""
        return [(self.names[id(op)], op) for op in self.ops
                if isinstance(op, keras.layers.Layer) and not isinstance(op, keras.layers.InputLayer)]


# ---- a Functional view of any model -------------------------------------------------------------

_TRACED: "weakref.WeakKeyDictionary[keras.Model, keras.Model]" = weakref.WeakKeyDictionary()
_LOCK = threading.RLock()


def functional_view(model: keras.Model) -> keras.Model:
    """A Functional model over the same layers and variables as ``model``.

    Functional: itself. Sequential: ``keras.Model(model.inputs, model.outputs)`` (Keras 3
    Sequential keeps its graph private). Subclassed: ``call`` traced once on a symbolic input,
    which works when ``call`` is made of Keras layers and ops (the view is kept per model, as
    a second trace would make every layer a shared layer).
    """
    if isinstance(model, keras.Sequential):
        try:
            inputs, outputs = model.inputs, model.outputs
        except (AttributeError, ValueError):
            inputs = outputs = None
        if not inputs:
            raise ModelGraphError(f"Sequential model {model.name!r} was never built: it has no input shape. "
                                  "Start it with keras.Input(shape=...) and save it again")
        return keras.Model(inputs, outputs, name=model.name)
    try:
        if model.operations is not None and model.inputs:
            return model
    except (AttributeError, ValueError):
        pass
    return _traced(model)


def _traced(model: keras.Model) -> keras.Model:
    with _LOCK:
        view = _TRACED.get(model)
        if view is not None:
            return view
        shape = _input_shape(model)
        x = keras.Input(shape=shape[1:], batch_size=shape[0], name=f"{model.name}_input")
        try:
            y = model.call(x)
            view = keras.Model(x, y, name=model.name)
        except Exception as e:  # noqa: BLE001 - user code: any failure means "cannot be traced"
            raise ModelGraphError(
                f"model {model.name!r} ({type(model).__name__}) is a subclassed model whose call() could not be "
                f"traced on a symbolic input ({type(e).__name__}: {e}); activations cannot be tapped. Build it "
                "with the Functional API (keras.Model(inputs, outputs)) or as a keras.Sequential") from e
        _TRACED[model] = view
        return view


def _input_shape(model: keras.Model) -> tuple:
    shape = None
    try:
        shape = model.input_shape
    except (AttributeError, ValueError):
        cfg = model.get_build_config() if model.built else None
        shape = (cfg or {}).get("input_shape")
    if not shape or not isinstance(shape[0], (int, type(None))):
        raise ModelGraphError(f"model {model.name!r} has no single known input shape; build it on one "
                              "image batch shape (model.build((None, H, W, C))) before saving")
    return tuple(shape)


# ---- call sites ----------------------------------------------------------------------------------


def _flat_tensors(value: Any) -> tuple[keras.KerasTensor, ...]:
    return tuple(t for t in keras.tree.flatten(value) if isinstance(t, keras.KerasTensor))


def _call_sites(view: keras.Model) -> dict[int, tuple[tuple[keras.KerasTensor, ...], keras.KerasTensor]]:
    """id(op) -> (input tensors, the single output tensor) of each op's call in ``view``'s graph.

    Walked back from the outputs, so that only this graph's calls count: a nested model's
    ``input``/``output`` properties name its own graph's tensors, and the layers of a reloaded
    Sequential keep the call sites of its earlier builds. Calls are read from ``_inbound_nodes``
    (a private attribute; tests/core/engine/test_model_shapes.py fails loudly if it changes).
    A layer called twice in one graph (shared) has no single call and is left out.
    """
    needed = {id(t) for t in _flat_tensors(view.outputs)}
    sites = {}
    for op in reversed(view.operations):
        if isinstance(op, keras.layers.InputLayer):
            continue
        nodes = [n for n in getattr(op, "_inbound_nodes", None) or []
                 if any(id(t) in needed for t in _flat_tensors(n.output_tensors))]
        for n in nodes:
            needed.update(id(t) for t in _flat_tensors(n.input_tensors))
        outs = _flat_tensors(nodes[0].output_tensors) if len(nodes) == 1 else ()
        if len(outs) == 1:
            sites[id(op)] = (_flat_tensors(nodes[0].input_tensors), outs[0])
    return sites


# ---- building ------------------------------------------------------------------------------------

_CACHE: "OrderedDict[int, tuple[keras.Model, Graph]]" = OrderedDict()
CACHE_SIZE = 8  # graphs of models in use (engines keep theirs); bounded so old models can be freed


def build_graph(model: keras.Model) -> Graph:
    """The op graph of ``model`` (any shape, nested models expanded); cached per model object."""
    with _LOCK:
        hit = _CACHE.get(id(model))
        if hit is not None and hit[0] is model:
            _CACHE.move_to_end(id(model))
            return hit[1]
        graph = _build(functional_view(model))
        _CACHE[id(model)] = (model, graph)
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
        return graph


class _Builder:
    def __init__(self) -> None:
        self.ops: list[Any] = []
        self.names: dict[int, str] = {}
        self.producer: dict[int, Any] = {}
        self.inputs: dict[int, tuple] = {}
        self.outputs: dict[int, keras.KerasTensor] = {}
        self.lifted: dict[int, keras.KerasTensor] = {}
        self.seen: dict[str, int] = {}

    def add(self, op: Any, name: str, ins: tuple, out: keras.KerasTensor) -> None:
        if id(op) in self.names:  # one op at two call sites of a nested model: keep the first
            return
        k = self.seen.get(name, 0)
        self.seen[name] = k + 1
        self.ops.append(op)
        self.names[id(op)] = name if k == 0 else f"{name}:{k}"
        self.producer[id(out)] = op
        self.outputs[id(op)] = out
        self.inputs[id(op)] = ins

    def nested(self, op: Any, prefix: str, ins: tuple) -> None:
        """Inline the ops of nested model ``op`` (called on ``ins``) under ``prefix/``."""
        inner = build_graph(op)
        if len(ins) != 1 or len(inner.model.inputs) != 1:
            return  # multi-input nested models stay opaque
        inner_ops = [o for o in inner.ops if not isinstance(o, keras.layers.InputLayer)]
        if not inner_ops:
            return
        tensors = [inner.top(inner.outputs[id(o)]) for o in inner_ops]
        # one call of a sub-model returning every inner tensor, made on the outer tensor: it adds
        # no call site to the inner layers (a model call only records a node for itself)
        taps = keras.Model(inner.model.inputs, tensors, name=f"{op.name}_inner_taps")
        lifted = keras.tree.flatten(taps(ins[0]))
        for o, t in zip(inner_ops, lifted):
            self.add(o, f"{prefix}{NESTED_SEP}{inner.name(o)}", inner.inputs[id(o)], inner.outputs[id(o)])
            self.lifted[id(inner.outputs[id(o)])] = t
        self.lifted[id(inner.model.inputs[0])] = ins[0]
        for t_id, t in inner.lifted.items():  # tensors of deeper levels: through this level's lift
            self.lifted.setdefault(t_id, self.lifted.get(id(t), t))


def _build(view: keras.Model) -> Graph:
    b = _Builder()
    sites = _call_sites(view)
    for op in view.operations:
        if isinstance(op, keras.layers.InputLayer):
            ins, out = (), op.output
        elif id(op) in sites:
            ins, out = sites[id(op)]
        else:
            continue
        if isinstance(op, keras.Model):
            b.nested(op, op.name, ins)
        b.add(op, op.name, ins, out)
    return Graph(view, tuple(b.ops), b.names, b.producer, b.inputs, b.outputs, b.lifted)
