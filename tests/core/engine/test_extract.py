"""Extraction engine: correct values, no retracing, weights as arguments, thread safety, SE logits, gradients."""
from __future__ import annotations

import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from core.engine.extract import Extractor, WeightValues, activations
from core.engine.taps import default_taps, list_tappable
from core.training.models import ArchConfig, build_seed_net
from core.engine.se import find_se_blocks, per_channel

SIZE = 32


@pytest.fixture(scope="module")
def net() -> keras.Model:
    return build_seed_net(ArchConfig(input_size=SIZE, dropout=0.1))


@pytest.fixture(scope="module")
def extractor(net: keras.Model) -> Extractor:
    return Extractor(net)


@pytest.fixture(scope="module")
def probes() -> np.ndarray:
    return np.random.default_rng(0).random((8, SIZE, SIZE, 3), dtype=np.float32)


def random_checkpoint(model: keras.Model, seed: int) -> dict[str, np.ndarray]:
    """A plausible checkpoint: ``{variable.path: array}`` like the run format (``model.weights`` only)."""
    rng = np.random.default_rng(seed)
    ckpt = {}
    for v in model.weights:
        a = rng.normal(0.0, 0.2, size=tuple(v.shape)).astype(np.float32)
        if v.path.endswith("moving_variance"):
            a = np.abs(a) + 0.5
        ckpt[v.path] = a
    return ckpt


def reference(model: keras.Model, ckpt: dict[str, np.ndarray], names: list[str], x: np.ndarray) -> dict:
    """The slow, obvious way: assign the weights, build a sub-model, predict."""
    clone = keras.models.clone_model(model)
    for v in clone.weights:
        v.assign(ckpt[v.path])
    sub = keras.Model(clone.input, [clone.get_layer(n).output for n in names])
    return dict(zip(names, sub.predict(x, verbose=0)))


def test_default_taps_cover_conv_activation_add_dense_and_se(net: keras.Model) -> None:
    taps = default_taps(net)
    for name in ("stem_conv", "stem_act", "block1_conv1", "block2_add", "block2_proj", "dense1", "classifier",
                 "block1_se_reduce", "block1_se_expand", "block1_se_gate", "block1_se_excite"):
        assert name in taps
    assert not any("_bn" in t or t.endswith("pool") or "dropout" in t for t in taps)
    assert len(taps) == len(set(taps))


def test_list_tappable_has_shapes_and_kinds(net: keras.Model) -> None:
    table = {t.name: t for t in list_tappable(net)}
    assert table["stem_bn"].kind == "norm" and not table["stem_bn"].default
    assert table["block1_se_gate"].kind == "se_gate" and table["block1_se_gate"].shape == (None, 1, 1, 24)
    assert table["block1_se_expand"].kind == "se_logits"
    assert table["block1_se_reduce"].kind == "se_hidden"
    assert table["block2_add"].kind == "add" and table["image"].kind == "input"
    assert table["stem_conv"].shape == (None, SIZE // 2, SIZE // 2, 16)


def test_run_matches_predict_of_a_submodel(net: keras.Model, extractor: Extractor, probes: np.ndarray) -> None:
    ckpt = random_checkpoint(net, 1)
    out = extractor.run(extractor.weights_from_mapping(ckpt), probes)
    assert list(out) == extractor.taps
    names = ["block1_act1", "block2_add", "block3_se_gate", "block3_se_expand", "dense1", "classifier"]
    ref = reference(net, ckpt, names, probes)
    for n in names:
        np.testing.assert_allclose(out[n], ref[n], rtol=1e-5, atol=1e-5, err_msg=n)
        assert out[n].dtype == np.float32


def test_no_retracing_across_checkpoints_and_batch_sizes(net: keras.Model, probes: np.ndarray) -> None:
    ex = Extractor(net, ["block2_act1", "classifier"])
    assert ex.trace_count == 0  # traced on first use (a sweep never uses ``run``) or by ``prepare``
    ex.prepare()
    assert ex.trace_count == 1
    results = []
    for seed in (1, 2):
        w = ex.weights_from_mapping(random_checkpoint(net, seed))
        for n in (1, 3, 8):
            results.append(ex.run(w, probes[:n]))
    assert ex.trace_count == 1
    assert not np.allclose(results[0]["block2_act1"], results[3]["block2_act1"])  # checkpoints differ
    np.testing.assert_allclose(results[0]["classifier"], results[2]["classifier"][:1], rtol=1e-5, atol=1e-6)


def test_weights_are_arguments_model_is_untouched(net: keras.Model, extractor: Extractor,
                                                   probes: np.ndarray) -> None:
    before = {v.path: v.numpy().copy() for v in net.weights}
    extractor.run(extractor.weights_from_mapping(random_checkpoint(net, 3)), probes)
    extractor.run_training_mode(extractor.weights_from_mapping(random_checkpoint(net, 3)), probes)
    for v in net.weights:
        np.testing.assert_array_equal(v.numpy(), before[v.path], err_msg=v.path)


def test_concurrent_threads_get_their_own_checkpoint(net: keras.Model, probes: np.ndarray) -> None:
    ex = Extractor(net, ["block1_act2", "block3_se_gate", "block3_add", "classifier"])
    weights = [ex.weights_from_mapping(random_checkpoint(net, 100 + k)) for k in range(8)]
    expected = [ex.run(w, probes) for w in weights]
    got: dict[int, list[dict]] = {k: [] for k in range(8)}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(k: int) -> None:
        try:
            barrier.wait()
            for _ in range(3):
                got[k].append(ex.run(weights[k], probes))
        except BaseException as e:  # surfaced below; a thread's exception is otherwise lost
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for k in range(8):
        for result in got[k]:
            for name, ref in expected[k].items():
                np.testing.assert_allclose(result[name], ref, rtol=1e-6, atol=1e-6, err_msg=f"thread {k} {name}")
    assert ex.trace_count == 1


def test_weights_from_mapping_reports_missing_and_mismatched(net: keras.Model, extractor: Extractor) -> None:
    ckpt = random_checkpoint(net, 4)
    del ckpt["block2_conv1/kernel"]
    ckpt["dense1/bias"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError) as err:
        extractor.weights_from_mapping(ckpt)
    assert "block2_conv1/kernel" in str(err.value) and "dense1/bias" in str(err.value)


def test_run_used_reads_and_binds_only_the_taps_weights(net: keras.Model, probes: np.ndarray) -> None:
    ex = Extractor(net, ["block1_conv1", "block1_se_expand"])  # a real tap and a virtual (logits) one
    ckpt = random_checkpoint(net, 9)
    full = ex.run(ex.weights_from_mapping(ckpt), probes[:3])
    assert {"stem_conv/kernel", "block1_conv1/kernel", "block1_se_expand/kernel"} <= ex.used_paths
    assert not any(p.startswith(("block2", "dense1", "classifier")) for p in ex.used_paths)
    used = {k: v for k, v in ckpt.items() if k in ex.used_paths}  # nothing else is needed
    got = ex.run_used(used, probes[:3])
    for name in ex.taps:
        np.testing.assert_allclose(got[name], full[name], rtol=1e-6, atol=1e-6, err_msg=name)
    ex.run_used(used, probes[:1])  # another batch size: no retrace
    inputs = ex._used_fn.function.get_concrete_function().structured_input_signature[0][0]
    assert len(inputs) == len(ex.used_paths) < len(net.variables)
    del used["block1_conv1/kernel"]
    used["stem_conv/kernel"] = np.zeros((1, 1), np.float32)
    with pytest.raises(ValueError) as err:
        ex.run_used(used, probes[:1])
    assert "block1_conv1/kernel" in str(err.value) and "stem_conv/kernel: expected" in str(err.value)


def test_weights_from_another_instance_and_wrong_input(net: keras.Model, extractor: Extractor,
                                                       probes: np.ndarray) -> None:
    twin = build_seed_net(ArchConfig(input_size=SIZE, dropout=0.1), seed=5)
    w = extractor.weights_from_model(twin)
    assert isinstance(w, WeightValues)
    np.testing.assert_allclose(extractor.run(w, probes[:2])["classifier"], twin.predict(probes[:2], verbose=0),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        extractor.run(w, np.zeros((1, SIZE + 1, SIZE, 3), np.float32))
    other = Extractor(build_seed_net(ArchConfig(input_size=SIZE, se=False)), ["classifier"])
    with pytest.raises(ValueError):
        extractor.run(other.weights_from_model(other.model), probes)


def test_unknown_tap_raises_key_error_listing_valid_names(net: keras.Model, probes: np.ndarray) -> None:
    with pytest.raises(KeyError) as err:
        Extractor(net, ["block1_conv1", "no_such_layer"])
    assert "no_such_layer" in str(err.value) and "block1_se_gate" in str(err.value)
    with pytest.raises(KeyError, match="valid names"):
        activations(net, probes[:1], ["nope"])


def test_activations_keract_contract(net: keras.Model, probes: np.ndarray) -> None:
    out = activations(net, probes[:2], "block1_conv1")
    assert list(out) == ["block1_conv1"] and out["block1_conv1"].shape == (2, SIZE // 2, SIZE // 2, 24)
    every = activations(net, probes[:1])
    assert "image" in every and "stem_bn" in every and "classifier" in every


def test_training_mode_uses_batch_statistics(net: keras.Model, extractor: Extractor, probes: np.ndarray) -> None:
    w = extractor.weights_from_mapping(random_checkpoint(net, 6))
    inf, trn = extractor.run(w, probes), extractor.run_training_mode(w, probes)
    assert not np.allclose(inf["block2_act1"], trn["block2_act1"])
    # the training-mode call must not have moved the moving statistics
    np.testing.assert_array_equal(extractor.run(w, probes)["block2_act1"], inf["block2_act1"])


def test_dense_gate_logits_are_computed(probes: np.ndarray) -> None:
    inp = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="c")(inp)
    s = layers.GlobalAveragePooling2D(name="pool")(x)
    s = layers.Reshape((1, 1, 8))(s)
    s = layers.Conv2D(2, 1, activation="swish", name="reduce")(s)
    s = layers.Conv2D(8, 1, activation="sigmoid", name="expand")(s)
    y = layers.Multiply(name="b_se_excite")([x, s])
    t = layers.Dense(3, activation="relu", name="d1")(layers.GlobalAveragePooling2D()(y))
    t = layers.Dense(8, activation="sigmoid", name="d_gate")(t)
    z = layers.Multiply(name="b2_se_excite")([y, layers.Reshape((1, 1, 8))(t)])
    model = keras.Model(inp, layers.GlobalAveragePooling2D()(z))
    keras.utils.set_random_seed(0)
    blocks = find_se_blocks(model)
    assert [b.logits_tap for b in blocks] == ["expand/logits", "d_gate/logits"]
    ex = Extractor(model)
    assert {"expand/logits", "d_gate/logits", "expand", "d_gate", "reduce", "d1"} <= set(ex.taps)
    for b in blocks:
        # only the logits tap: the gate layer itself is then not even in the sub-model
        alone = Extractor(model, [b.logits_tap])
        np.testing.assert_allclose(alone.run(alone.weights_from_model(model), probes)[b.logits_tap],
                                   ex.run(ex.weights_from_model(model), probes)[b.logits_tap], rtol=1e-6)
    out = ex.run(ex.weights_from_model(model), probes)
    for b in blocks:
        np.testing.assert_allclose(per_channel(out[b.gate]), per_channel(1 / (1 + np.exp(-out[b.logits_tap]))),
                                   rtol=1e-5, atol=1e-6)


def test_mobilenet_hard_sigmoid_gate_matches_its_logits(probes: np.ndarray) -> None:
    model = keras.applications.MobileNetV3Small(weights=None, input_shape=(SIZE, SIZE, 3))
    blocks = find_se_blocks(model)[:3]
    taps = [t for b in blocks for t in (b.gate, b.logits, b.hidden, b.excite)]
    ex = Extractor(model, taps)
    out = ex.run(ex.weights_from_model(model), probes[:2] * 255)
    for b in blocks:
        np.testing.assert_allclose(out[b.gate], np.clip(out[b.logits] + 3, 0, 6) / 6, rtol=1e-5, atol=1e-6)
        assert out[b.hidden].min() >= 0


def test_gradients_per_variable_match_gradient_tape(net: keras.Model, extractor: Extractor,
                                                    probes: np.ndarray) -> None:
    ckpt = random_checkpoint(net, 7)
    y = np.arange(8) % 25
    norms = extractor.gradients(extractor.weights_from_mapping(ckpt), probes, y)
    assert set(norms) == {v.path for v in net.trainable_variables}
    clone = keras.models.clone_model(net)
    for v in clone.weights:
        v.assign(ckpt[v.path])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, clone(probes, training=False)))
    grads = tape.gradient(loss, clone.trainable_variables)
    for v, g in zip(clone.trainable_variables, grads):
        np.testing.assert_allclose(norms[v.path], float(tf.norm(g)), rtol=1e-4, err_msg=v.path)
    assert extractor.trace_count >= 2


def test_reduced_statistics_equal_numpy_on_large_small_and_one_value_taps() -> None:
    """In-graph statistics (matrix-product sums above LARGE_TAP) against float64 numpy."""
    from core.analysis import stats as S
    from core.engine.reductions import LARGE_TAP, REDUCED_KEYS

    inp = keras.Input((48, 48, 3))
    wide = layers.Conv2D(24, 3, padding="same", name="wide", bias_initializer=keras.initializers.Constant(20.0))(inp)
    act = layers.ReLU(name="act")(layers.Conv2D(24, 3, padding="same", name="signed")(inp))  # exact zeros
    merged = layers.Add(name="merged")([wide, act])
    small = layers.Conv2D(8, 3, strides=4, name="small")(merged)
    seq = layers.Reshape((12 * 12, 8), name="seq")(small)  # (N, L, C)
    pooled = layers.GlobalAveragePooling1D(name="pooled")(seq)
    out = layers.Dense(5, name="out", kernel_initializer="zeros")(pooled)  # one value per channel, all zero
    model = keras.Model(inp, out)
    taps = ["wide", "act", "merged", "small", "seq", "pooled", "out"]
    ex = Extractor(model, taps)
    positions = {t: int(np.prod(model.get_layer(t).output.shape[1:-1])) * int(model.get_layer(t).output.shape[-1])
                 for t in taps}
    assert positions["wide"] >= LARGE_TAP > positions["small"]  # both paths are exercised
    x = np.random.default_rng(3).normal(0.0, 1.0, (5, 48, 48, 3)).astype(np.float32)
    wv = ex.weights_from_model(model)
    red, raws = ex.run_reduced(wv, x, raw=["out"])
    raw = ex.run(wv, x)
    np.testing.assert_array_equal(raws["out"], raw["out"])
    assert red.taps == tuple(taps) and set(red.arrays) == set(REDUCED_KEYS)
    for t in taps:
        m = S.moments(raw[t])
        got = {k: red.arrays[k][:, red.columns(t)].astype(np.float64) for k in REDUCED_KEYS}
        assert red.totals[taps.index(t)] == m.total
        for k in ("min", "max", "n_zero"):  # exact
            np.testing.assert_array_equal(got[k], getattr(m, k), err_msg=f"{t} {k}")
        # float32 accumulation: relative to the sum of magnitudes (s) or the value itself (m2, |x|)
        np.testing.assert_allclose(got["s"], m.s, rtol=2e-6, atol=2e-6 * float(m.abs_sum.max()), err_msg=t)
        np.testing.assert_allclose(got["abs_sum"], m.abs_sum, rtol=2e-6, err_msg=t)
        np.testing.assert_allclose(got["m2"], m.m2, rtol=1e-4, atol=1e-6, err_msg=t)
    assert (red.arrays["n_zero"][:, red.columns("act")] > 0).all()
    np.testing.assert_array_equal(red.arrays["m2"][:, red.columns("out")], 0.0)
    np.testing.assert_array_equal(red.arrays["n_zero"][:, red.columns("out")], 1.0)
