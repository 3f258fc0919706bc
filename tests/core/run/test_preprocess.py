"""Tests for core.run.preprocess: exact arithmetic, manifest round trips, validation."""
from __future__ import annotations

import numpy as np
import pytest

from core.run.preprocess import VALID_KINDS, PreprocessSpec, apply_preprocessing, tf_preprocess

X = np.array([0, 51, 127, 255], np.uint8).reshape(1, 1, 4, 1).repeat(3, axis=-1)  # (1,1,4,3)


def test_none_is_float_of_values():
    out = apply_preprocessing(X, PreprocessSpec("none"))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 0, :, 0], [0.0, 51.0, 127.0, 255.0])


def test_scale01_exact():
    out = apply_preprocessing(X, PreprocessSpec("scale01"))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0, 0, :, 0], np.float32([0.0, 0.2, 127 / 255, 1.0]))
    assert out[0, 0, 0, 0] == 0.0 and out[0, 0, 3, 0] == 1.0


def test_scale_pm1_exact_endpoints():
    out = apply_preprocessing(X, PreprocessSpec("scale_pm1"))
    assert out.dtype == np.float32
    assert out[0, 0, 0, 0] == -1.0
    assert out[0, 0, 3, 0] == 1.0
    np.testing.assert_allclose(out[0, 0, :, 0], [-1.0, 51 / 127.5 - 1, 127 / 127.5 - 1, 1.0], rtol=0, atol=1e-7)


def test_meanstd_per_channel_exact():
    spec = PreprocessSpec("meanstd", mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0))
    x = np.array([[[[10, 20, 30], [12, 28, 55]]]], np.uint8)  # (1,1,2,3)
    out = apply_preprocessing(x, spec)
    np.testing.assert_array_equal(out, np.float32([[[[0, 0, 0], [1, 2, 5]]]]))


def test_meanstd_single_value_broadcasts():
    spec = PreprocessSpec("meanstd", mean=(100,), std=(50,))
    out = apply_preprocessing(np.array([[[[0, 100, 200]]]], np.uint8), spec)
    np.testing.assert_array_equal(out, np.float32([[[[-2, 0, 2]]]]))


def test_meanstd_channel_mismatch_raises():
    spec = PreprocessSpec("meanstd", mean=(1, 2), std=(1, 1))
    with pytest.raises(ValueError, match="channels"):
        apply_preprocessing(X, spec)


def test_shape_preserved_single_image():
    x = np.zeros((5, 7, 3), np.uint8)
    assert apply_preprocessing(x, PreprocessSpec()).shape == (5, 7, 3)


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(ValueError) as e:
        PreprocessSpec("caffe")
    for kind in VALID_KINDS:
        assert kind in str(e.value)
    with pytest.raises(ValueError, match="scale_pm1"):
        PreprocessSpec.from_dict({"kind": "torch"})


@pytest.mark.parametrize(
    "d",
    [
        {"kind": "none"},
        {"kind": "scale01"},
        {"kind": "scale_pm1"},
        {"kind": "meanstd", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
    ],
)
def test_dict_round_trip(d):
    spec = PreprocessSpec.from_dict(d)
    assert spec.to_dict() == d
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    hash(spec)  # usable as a cache key


def test_from_dict_none_defaults_to_scale01():
    assert PreprocessSpec.from_dict(None) == PreprocessSpec("scale01")


@pytest.mark.parametrize(
    "d",
    [
        {"kind": "meanstd", "mean": [1, 2, 3]},
        {"kind": "meanstd", "mean": [1, 2, 3], "std": [1, 2]},
        {"kind": "meanstd", "mean": [1, 2, 3], "std": [1, 0, 1]},
        {"kind": "scale01", "mean": [1]},
        {"kind": "scale01", "colour": "rgb"},
        {"mean": [1]},
        "scale01",
    ],
)
def test_invalid_dicts_raise(d):
    with pytest.raises(ValueError):
        PreprocessSpec.from_dict(d)


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec("none"),
        PreprocessSpec("scale01"),
        PreprocessSpec("scale_pm1"),
        PreprocessSpec("meanstd", mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375)),
    ],
)
def test_tf_matches_numpy(spec):
    tf = pytest.importorskip("tensorflow")
    x = np.random.default_rng(0).integers(0, 256, (2, 4, 5, 3), dtype=np.uint8)
    want = apply_preprocessing(x, spec)
    got = tf_preprocess(tf.constant(x), spec).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
