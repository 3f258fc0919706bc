"""The engine's functions run without Grappler, set per call and per thread (a canary for TF internals)."""
from __future__ import annotations

import inspect
import threading

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.eager import context

from core.engine import runtime
from core.engine.runtime import GraphFunction, engine_calls


def grappler_off() -> bool:
    options = context.context().function_call_options
    config = config_pb2.ConfigProto.FromString(options.config_proto_serialized)
    return config.graph_options.rewrite_options.disable_meta_optimizer


def test_eager_calls_read_this_threads_call_options() -> None:
    # the canary: if TensorFlow stops reading these options at call time, the setting does nothing
    assert "function_call_options" in inspect.getsource(context.Context.call_function)
    assert isinstance(context.Context.function_call_options, property)
    assert context.Context.function_call_options.fset is not None


def test_only_calls_inside_the_block_and_in_this_thread_run_without_grappler() -> None:
    before = context.context().function_call_options
    assert not grappler_off()
    seen: list[bool] = []
    with engine_calls():
        assert grappler_off()
        other = threading.Thread(target=lambda: seen.append(grappler_off()))
        other.start()
        other.join()
    assert seen == [False]  # another thread keeps TensorFlow's defaults
    assert context.context().function_call_options is before
    with pytest.raises(RuntimeError), engine_calls():
        raise RuntimeError("boom")
    assert context.context().function_call_options is before


def test_a_graph_function_gives_the_same_values_as_a_plain_tf_function() -> None:
    def body(x: tf.Tensor) -> tf.Tensor:
        return tf.nn.relu(x * 2.0 + 1.0)

    spec = [tf.TensorSpec((None, 3), tf.float32)]
    fn = GraphFunction(body, spec)
    x = np.array([[-1.0, 0.0, 2.0]], np.float32)
    np.testing.assert_array_equal(fn(x).numpy(), [[0.0, 1.0, 5.0]])
    np.testing.assert_array_equal(fn(x).numpy(), tf.function(body, input_signature=spec)(x).numpy())
    assert not grappler_off()  # restored after the call
    assert len(runtime._QUICK) >= 1
