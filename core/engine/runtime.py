"""The engine's traced functions, called without Grappler (TensorFlow's graph optimiser).

An engine graph (one model's forward pass with its reductions, per tap set) runs once per
checkpoint, in a process that lives for one sweep or one browsing session. Grappler rewrites a
graph on its first call; for these graphs that first call costs more than the rewrites ever save
(``bench/bench_internals.py`` times first and later calls both ways). The setting is made per
call and per thread: the user's own functions in the same process keep TensorFlow's defaults.

It uses the eager context's per-thread call options, which are not public API; the canary
``tests/core/engine/test_runtime.py`` fails when they change.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.eager import context as _context  # not public: see the module docstring

_LOCK = threading.Lock()
_QUICK: dict[tuple[bytes, Any], Any] = {}  # a thread's call options -> the same without Grappler


def _without_grappler(options: Any) -> Any:
    key = (options.config_proto_serialized, options.executor_type)
    with _LOCK:
        got = _QUICK.get(key)
        if got is None:
            config = config_pb2.ConfigProto.FromString(options.config_proto_serialized or b"")
            config.graph_options.rewrite_options.disable_meta_optimizer = True
            got = _QUICK[key] = _context.FunctionCallOptions(options.executor_type, config)
        return got


@contextmanager
def engine_calls() -> Iterator[None]:
    """Function calls in this thread, inside the block, run without Grappler."""
    ctx = _context.context()
    before = ctx.function_call_options
    ctx.function_call_options = _without_grappler(before)
    try:
        yield
    finally:
        ctx.function_call_options = before


class GraphFunction:
    """``body`` traced now with a fixed signature (a ``tf.function``), called as ``engine_calls`` says."""

    def __init__(self, body: Callable[..., Any], signature: Sequence[Any]):
        self.function = tf.function(body, input_signature=list(signature), autograph=False)
        self.function.get_concrete_function()

    def __call__(self, *args: Any) -> Any:
        with engine_calls():
            return self.function(*args)
