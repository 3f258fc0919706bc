"""Every Keras model shape has a tappable graph: Functional, Sequential, subclassed, nested models."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from core.engine.architecture import architecture_table
from core.engine.extract import Extractor
from core.engine.graph import ModelGraphError, build_graph, functional_view
from core.engine.se import find_se_blocks


def _sequential() -> keras.Model:
    return keras.Sequential([
        keras.Input((12, 12, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
        keras.layers.BatchNormalization(name="bn"), keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(3, activation="softmax", name="out")], name="seq")


@pytest.fixture(scope="module")
def mobilenet_head() -> keras.Model:
    """MobileNetV3Small (its own preprocessing inside) with a new head, inside a Sequential."""
    base = keras.applications.MobileNetV3Small(input_shape=(48, 48, 3), include_top=False, weights=None)
    return keras.Sequential([keras.Input((48, 48, 3)), base, keras.layers.GlobalAveragePooling2D(name="pool"),
                             keras.layers.Dense(4, activation="softmax", name="head")], name="transfer")


def _x(shape: tuple[int, ...], n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, *shape)).astype("float32")


def test_canary_nested_model_call_site_is_read_from_its_node() -> None:
    """Keras internal used by core.engine.graph._call_site: a model layer's ``_inbound_nodes``."""
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    x = keras.Input((4,))
    y = inner(x)
    nodes = inner._inbound_nodes  # noqa: SLF001
    assert len(nodes) == 1 and nodes[0].input_tensors[0] is x and nodes[0].output_tensors[0] is y


def test_sequential_taps_equal_the_model_output() -> None:
    model = _sequential()
    assert not hasattr(model, "operations")  # why functional_view exists
    ex = Extractor(model)
    assert ex.taps == ["c1", "out"]
    x = _x((12, 12, 3))
    out = ex.run(ex.weights_from_model(model), x)
    np.testing.assert_allclose(out["out"], model(x).numpy(), rtol=1e-6, atol=1e-7)
    assert [r for r in architecture_table(model)["layer"]] == ["c1", "bn", "gap", "out"]


def test_unbuilt_sequential_is_refused_with_the_way_out() -> None:
    with pytest.raises(ModelGraphError, match="keras.Input"):
        functional_view(keras.Sequential([keras.layers.Dense(2)]))


def test_subclassed_model_is_traced_once() -> None:
    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3, activation="relu", name="conv")
            self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
            self.dense = keras.layers.Dense(3, name="dense")

        def call(self, x):
            return self.dense(self.pool(self.conv(x)))

    model = Net()
    x = _x((10, 10, 3))
    ref = model(x).numpy()
    ex = Extractor(model)
    assert ex.taps == ["conv", "dense"]
    assert functional_view(model) is functional_view(model)
    np.testing.assert_allclose(ex.run(ex.weights_from_model(model), x)["dense"], ref, rtol=1e-5, atol=1e-6)
    Extractor(model)  # a second extractor re-uses the traced view


def test_nested_backbone_in_sequential_has_nine_se_blocks_named_outer_inner(mobilenet_head) -> None:
    blocks = find_se_blocks(mobilenet_head)
    assert len(blocks) == 9
    assert all(b.gate.startswith("MobileNetV3Small/") and b.excite.startswith("MobileNetV3Small/") for b in blocks)
    names = set(build_graph(mobilenet_head).names.values())
    assert {"MobileNetV3Small/conv", "pool", "head"} <= names
    table = architecture_table(mobilenet_head)
    assert (table["SE block"] != "").sum() >= 9 * 4
    # parameters are counted once: the nested model's own row has none
    assert table["params"].sum() == mobilenet_head.count_params()


def test_nested_taps_equal_a_plain_submodel_of_the_backbone(mobilenet_head) -> None:
    base = mobilenet_head.layers[0]
    blocks = find_se_blocks(mobilenet_head)
    gate = blocks[3].gate
    ex = Extractor(mobilenet_head, [gate, "MobileNetV3Small/conv", "head"])
    x = _x((48, 48, 3))
    out = ex.run(ex.weights_from_model(mobilenet_head), x)
    inner = build_graph(base)
    plain = keras.Model(base.inputs, [inner.outputs[id(inner.op_named(gate.split("/", 1)[1]))],
                                      base.get_layer("conv").output])
    g_ref, conv_ref = (t.numpy() for t in plain(tf.constant(x)))
    np.testing.assert_allclose(out[gate].reshape(g_ref.shape), g_ref, atol=1e-6)
    np.testing.assert_allclose(out["MobileNetV3Small/conv"], conv_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["head"], mobilenet_head(x).numpy(), rtol=1e-5, atol=1e-6)


def test_nested_model_gradients_and_functional_outer() -> None:
    inner = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu", name="ic")],
                             name="inner")
    x_in = keras.Input((8, 8, 3))
    y = keras.layers.Dense(3, activation="softmax", name="out")(keras.layers.Flatten(name="flat")(inner(x_in)))
    model = keras.Model(x_in, y, name="outer")
    ex = Extractor(model)
    assert "inner/ic" in ex.taps
    x = _x((8, 8, 3))
    w = ex.weights_from_model(model)
    out = ex.run(w, x)
    np.testing.assert_allclose(out["inner/ic"], inner(x).numpy(), rtol=1e-5, atol=1e-5)
    grads = ex.gradients(w, x, np.array([0, 2]))
    assert set(grads) == {v.path for v in model.trainable_variables} and all(g > 0 for g in grads.values())
