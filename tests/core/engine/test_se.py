"""SE blocks are found by graph structure in the built-in net, Keras applications and hand-written variants."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers, ops

from core.training.models import ArchConfig, build_seed_net
from core.engine.se import SEBlock, build_graph, find_se_blocks, per_channel


@pytest.fixture(scope="module")
def efficientnet() -> keras.Model:
    return keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3))


@pytest.fixture(scope="module")
def mobilenet() -> keras.Model:
    return keras.applications.MobileNetV3Small(weights=None, input_shape=(64, 64, 3))


def _names(model: keras.Model) -> set[str]:
    return set(build_graph(model).names.values())


def _assert_fields_are_taps(model: keras.Model, blocks: list[SEBlock]) -> None:
    names = _names(model)
    for b in blocks:
        for f in (b.excite, b.gate, b.squeeze, b.spatial, b.hidden, b.logits, b.gate_from_dense):
            assert f is None or f in names, (b, f)


def test_seed_net_default_has_five_blocks_with_every_part() -> None:
    model = build_seed_net(ArchConfig(input_size=32))
    blocks = find_se_blocks(model)
    assert [b.name for b in blocks] == [f"block{i}_se" for i in range(1, 6)]
    b = blocks[0]
    assert (b.excite, b.gate, b.logits, b.squeeze, b.hidden) == (
        "block1_se_excite", "block1_se_gate", "block1_se_expand", "block1_se_squeeze", "block1_se_reduce")
    assert b.gate_from_dense is None and b.channels == 24 and b.spatial == "block1_act2"
    assert b.logits_tap == "block1_se_expand"
    assert [b.channels for b in blocks] == list(ArchConfig().widths)


def test_seed_net_without_se_has_none() -> None:
    assert find_se_blocks(build_seed_net(ArchConfig(input_size=32, se=False))) == []


def test_seed_net_subset_of_blocks() -> None:
    blocks = find_se_blocks(build_seed_net(ArchConfig(input_size=32, se_blocks=(2, 4))))
    assert [b.name for b in blocks] == ["block2_se", "block4_se"]


def test_efficientnet_b0_has_sixteen(efficientnet: keras.Model) -> None:
    blocks = find_se_blocks(efficientnet)
    assert len(blocks) == 16
    b = blocks[0]
    assert b.name == "block1a_se" and b.excite == "block1a_se_excite"
    # Conv2D(activation="sigmoid"): the logits exist only inside the layer
    assert b.logits is None and b.gate_from_dense == "block1a_se_expand" == b.gate
    assert b.hidden == "block1a_se_reduce" and b.squeeze == "block1a_se_squeeze"
    assert b.logits_tap == "block1a_se_expand/logits"
    _assert_fields_are_taps(efficientnet, blocks)


def test_mobilenet_v3_small_has_nine_with_op_built_hard_sigmoid(mobilenet: keras.Model) -> None:
    blocks = find_se_blocks(mobilenet)
    assert len(blocks) == 9
    layer_names = {layer.name for layer in mobilenet.layers}
    for b in blocks:
        assert b.excite.endswith("squeeze_excite_mul")
        assert b.gate not in layer_names  # x * (1/6) is an op node, invisible in model.layers
        # relu6(x + 3) / 6: the logits are what enters the "+ 3"
        assert b.logits.endswith("squeeze_excite_conv_1")
        assert b.hidden.endswith("squeeze_excite_relu")
        assert b.squeeze.endswith("squeeze_excite_avg_pool")
    _assert_fields_are_taps(mobilenet, blocks)


def test_resnet50_has_none() -> None:
    assert find_se_blocks(keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3))) == []


def test_dense_sigmoid_gate_with_reshape_before_multiply() -> None:
    inp = keras.Input((16, 16, 8))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="c")(inp)
    s = layers.GlobalAveragePooling2D(name="pool")(x)
    s = layers.Dense(2, activation="relu", name="fc1")(s)
    s = layers.Dense(8, activation="sigmoid", name="fc2")(s)
    s = layers.Reshape((1, 1, 8), name="rs")(s)
    out = layers.Multiply(name="b1_se_scale")([x, s])
    [b] = find_se_blocks(keras.Model(inp, out))
    assert b == SEBlock(name="b1_se", excite="b1_se_scale", gate="fc2", logits=None, squeeze="pool",
                        hidden="fc1", channels=8, spatial="c", gate_from_dense="fc2")


def test_op_built_block_mean_sigmoid_and_times_operator() -> None:
    """Pure ops: mean over H, W, a Dense pair, ops.sigmoid, and ``x * g`` (a multiply op node)."""
    inp = keras.Input((8, 8, 4))
    x = layers.Conv2D(4, 3, padding="same", name="c")(inp)
    s = ops.mean(x, axis=(1, 2), keepdims=True)
    s = layers.Dense(2, activation="relu", name="h")(s)
    logits = layers.Dense(4, name="z")(s)
    g = ops.sigmoid(logits)
    out = x * g
    model = keras.Model(inp, out)
    [b] = find_se_blocks(model)
    assert (b.logits, b.hidden, b.spatial, b.channels) == ("z", "h", "c", 4)
    assert b.gate not in {layer.name for layer in model.layers}
    assert b.name.startswith("se")


def test_multiply_of_unrelated_tensors_is_not_se() -> None:
    """A per-channel scale from a different map's pooling is not squeeze-and-excitation."""
    inp = keras.Input((8, 8, 4))
    a = layers.Conv2D(4, 3, padding="same", name="a")(inp)
    b = layers.Conv2D(4, 3, padding="same", name="b")(inp)
    g = layers.Dense(4, activation="sigmoid")(layers.GlobalAveragePooling2D(keepdims=True)(b))
    out = layers.Multiply()([a, g])
    assert find_se_blocks(keras.Model(inp, out)) == []


def test_per_channel_flattens_gate_shapes() -> None:
    assert per_channel(np.zeros((3, 1, 1, 5))).shape == (3, 5)
    assert per_channel(np.zeros((3, 5))).shape == (3, 5)
