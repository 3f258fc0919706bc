"""Grouped in-graph reductions: taps of one shape reduced together give each tap's own statistics."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import layers

from core.engine import reductions as R
from core.engine.extract import Extractor
from core.engine.reductions import REDUCED_KEYS, reduce_groups, tap_groups, unpack
from core.engine.runtime import GraphFunction

SIZE = 32


def per_tap(ex: Extractor, x: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics each tap gives reduced alone (a group of its own), in one traced function."""
    forward = ex._forward_body(training=False)
    blocks: list = []

    def body(trainable, non_trainable, xs):
        outs = forward(trainable, non_trainable, xs)
        stats, blocks[:] = reduce_groups(outs, [[i] for i in range(len(outs))])
        return stats

    fn = GraphFunction(body, [*ex._weight_spec, ex._x_spec])  # called as the engine's own functions are
    wv = ex.weights_from_model(ex.model)
    stats = [v.numpy() for v in fn(*ex._prepare(wv, x))]
    return unpack(stats, blocks, len(x), ex._red_offsets, ex._red_totals)[0]


def assert_grouped_equals_per_tap(model: keras.Model, x: np.ndarray, taps: list[str] | None = None) -> Extractor:
    ex = Extractor(model, taps)
    red, _ = ex.run_reduced(ex.weights_from_model(model), x)
    ref = per_tap(ex, x)
    blocks = ex._reduced_fns[()][1]
    assert len({b.taps for b in blocks}) < len(ex.taps)  # some taps did share their ops
    for k in REDUCED_KEYS:  # a (probe, channel) row is reduced alike in a stack of taps: the same bits
        np.testing.assert_array_equal(red.arrays[k], ref[k], err_msg=k)
    return ex


def test_tap_groups_share_shapes_keep_unknown_alone_and_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    shapes = [(None, 4, 4, 8), (None, 2, 2, 8), (None, 4, 4, 8), (None, None, 8), (None, 8), (None, 4, 4, 8),
              (None, 8), (None, 4, 4, 16)]
    assert tap_groups(shapes) == [[0, 2, 5], [1], [3], [4, 6], [7]]
    monkeypatch.setattr(R, "GROUP_VALUES", 2 * 4 * 4 * 8)  # two (4, 4, 8) taps per group
    assert tap_groups(shapes) == [[0, 2], [1], [3], [4, 6], [5], [7]]


def test_grouped_equals_per_tap_on_many_shapes_large_small_and_one_value() -> None:
    inp = keras.Input((48, 48, 3))
    a = layers.Conv2D(24, 3, padding="same", name="a")(inp)  # large: matrix-product sums
    b = layers.ReLU(name="b")(a)  # same shape as a: one group, exact zeros
    c = layers.Conv2D(24, 3, padding="same", name="c")(b)
    d = layers.Add(name="d")([c, b])
    e = layers.Conv2D(8, 3, strides=4, name="e")(d)  # small
    f = layers.ReLU(name="f")(e)
    g = layers.Conv2D(8, 1, name="g")(f)
    seq = layers.Reshape((12 * 12, 8), name="seq")(g)  # (N, L, C)
    pooled = layers.GlobalAveragePooling1D(name="pooled")(seq)
    h = layers.Dense(8, name="h")(pooled)  # one value per channel, same shape as pooled
    out = layers.Dense(5, name="out")(h)
    model = keras.Model(inp, out)
    x = np.random.default_rng(3).normal(0.0, 1.0, (5, 48, 48, 3)).astype(np.float32)
    ex = assert_grouped_equals_per_tap(model, x, ["a", "e", "b", "seq", "c", "pooled", "f", "d", "h", "g", "out"])
    # taps out of graph order and interleaved groups: every tap's columns hold its own statistics
    red, _ = ex.run_reduced(ex.weights_from_model(model), x)
    np.testing.assert_array_equal(red.arrays["max"][:, red.columns("h")], ex.run(ex.weights_from_model(model), x)["h"])


def test_grouped_equals_per_tap_on_a_sequential() -> None:
    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), layers.Conv2D(8, 3, padding="same", activation="relu"),
                              layers.Conv2D(8, 3, padding="same"), layers.ReLU(), layers.MaxPooling2D(),
                              layers.Conv2D(8, 3, padding="same", activation="relu"), layers.GlobalAveragePooling2D(),
                              layers.Dense(4)])
    x = np.random.default_rng(1).normal(0.0, 1.0, (3, SIZE, SIZE, 3)).astype(np.float32)
    assert_grouped_equals_per_tap(model, x)


def test_grouped_equals_per_tap_on_a_nested_keras_application() -> None:
    backbone = keras.applications.MobileNetV3Small(input_shape=(SIZE, SIZE, 3), weights=None, include_top=False,
                                                   include_preprocessing=False)
    inp = keras.Input((SIZE, SIZE, 3))
    out = layers.Dense(3, name="head")(layers.GlobalAveragePooling2D(name="pool")(backbone(inp)))
    model = keras.Model(inp, out)
    x = np.random.default_rng(2).normal(0.0, 1.0, (4, SIZE, SIZE, 3)).astype(np.float32)
    ex = assert_grouped_equals_per_tap(model, x)
    assert any("/" in t for t in ex.taps)


def test_prepared_function_is_the_one_run_reduced_uses() -> None:
    model = keras.Sequential([keras.Input((8, 8, 3)), layers.Conv2D(4, 3, activation="relu"), layers.Flatten(),
                              layers.Dense(2)])
    ex = Extractor(model)
    x = np.random.default_rng(0).normal(0.0, 1.0, (2, 8, 8, 3)).astype(np.float32)
    ex.prepare_reduced()
    ex.prepare_reduced()
    red, _ = ex.run_reduced(ex.weights_from_model(model), x)
    assert ex.trace_count == 1
    raw = ex.run(ex.weights_from_model(model), x)
    for t in ex.taps:
        np.testing.assert_array_equal(red.arrays["max"][:, red.columns(t)],
                                      raw[t].reshape(len(x), -1, raw[t].shape[-1]).max(axis=1))


def test_taps_of_shape_known_only_when_run_get_their_positions() -> None:
    """A fully convolutional model (spatial size unknown until run): statistics and positions per channel."""
    from core.analysis import stats as S

    inp = keras.Input((None, None, 3))
    a = layers.Conv2D(4, 3, padding="same", name="a")(inp)
    b = layers.ReLU(name="b")(a)  # exact zeros
    out = layers.Dense(2, name="out")(layers.GlobalAveragePooling2D(name="pool")(b))
    model = keras.Model(inp, out)
    ex = Extractor(model, ["a", "b", "pool", "out"])
    x = np.random.default_rng(0).normal(size=(3, 10, 12, 3)).astype(np.float32)
    wv = ex.weights_from_model(model)
    red, _ = ex.run_reduced(wv, x)
    raw = ex.run(wv, x)
    assert red.totals.tolist() == [120, 120, 1, 1]
    for t in ex.taps:
        m = S.moments(raw[t])
        got = {k: red.arrays[k][:, red.columns(t)].astype(np.float64) for k in REDUCED_KEYS}
        for k in ("min", "max", "n_zero"):
            np.testing.assert_array_equal(got[k], getattr(m, k), err_msg=f"{t} {k}")
        np.testing.assert_allclose(got["s"], m.s, rtol=2e-6, atol=2e-6 * float(m.abs_sum.max()), err_msg=t)
        np.testing.assert_allclose(got["m2"], m.m2, rtol=1e-4, atol=1e-6, err_msg=t)
    assert (red.arrays["n_zero"][:, red.columns("b")] > 0).all()
