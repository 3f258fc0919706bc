"""Probe fitting ``resize`` is tf.image.resize bit for bit; probe folders give labels from sub-folders."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from core.run.images import load_probe_image
from core.run.probefiles import ProbeFilesError, load_probe_files, save_user_probes, user_probes


def _png(path, shape=(23, 41, 3), seed=0):
    a = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(a if shape[-1] == 3 else a[:, :, 0]).save(path)
    return a


def test_resize_is_tf_image_resize_exactly(tmp_path) -> None:
    a = _png(tmp_path / "a.png")
    ref = tf.image.resize(a[None], (16, 20)).numpy()[0]
    out = load_probe_image(tmp_path / "a.png", (16, 20), fit="resize", as_float=True)
    assert out.dtype == np.float32 and np.array_equal(out, ref)
    u8 = load_probe_image(tmp_path / "a.png", (16, 20), fit="resize")
    assert u8.dtype == np.uint8 and np.abs(u8.astype(np.float32) - ref).max() <= 0.5


def test_resize_grey(tmp_path) -> None:
    a = _png(tmp_path / "g.png", (30, 30, 1))
    out = load_probe_image(tmp_path / "g.png", (10, 12), channels=1, fit="resize", as_float=True)
    assert out.shape == (10, 12, 1)
    assert np.array_equal(out, tf.image.resize(a[None, :, :, :1], (10, 12)).numpy()[0])


def test_probe_folder_labels_and_errors(tmp_path) -> None:
    for cls, seed in (("cat", 1), ("dog", 2)):
        (tmp_path / "p" / cls).mkdir(parents=True)
        _png(tmp_path / "p" / cls / "1.png", seed=seed)
    pf = load_probe_files([tmp_path / "p"], (8, 8, 3), "resize")
    assert pf.class_names == ("cat", "dog") and pf.y.tolist() == [0, 1] and pf.x.shape == (2, 8, 8, 3)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ProbeFilesError, match="no images"):
        load_probe_files([tmp_path / "empty"], (8, 8, 3), "resize")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not an image")
    with pytest.raises(ProbeFilesError, match="nothing was written"):
        load_probe_files([tmp_path / "bad"], (8, 8, 3), "crop")


def test_user_probes_round_trip(tmp_path) -> None:
    x = np.zeros((2, 4, 4, 3), np.uint8)
    save_user_probes(tmp_path, x, np.array([-1, 1]))
    got = user_probes(tmp_path, (4, 4, 3))
    assert got is not None and got[1].tolist() == [-1, 1]
    assert user_probes(tmp_path, (5, 5, 3)) is None  # another input size: not this run's
