"""Tests for core.training.data: synthetic set determinism, image folders, and the tf.data pipeline."""
from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.training.data import (
    MAX_CLASSES,
    SyntheticConfig,
    class_factors,
    class_names,
    list_image_folder,
    make_dataset,
    make_synthetic,
)
from core.run.preprocess import PreprocessSpec, apply_preprocessing

SMALL = SyntheticConfig(num_classes=25, image_size=32, seed=3)


# --- synthetic -------------------------------------------------------------------------------


def test_shapes_dtypes_and_balanced_labels():
    x, y = make_synthetic(SMALL, 100)
    assert x.shape == (100, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (100,) and y.dtype == np.int64
    assert np.array_equal(np.bincount(y, minlength=25), np.full(25, 4))
    assert x.std() > 20  # not blank


def test_same_seed_identical_bytes_different_seed_or_split_differs():
    a, ya = make_synthetic(SMALL, 40)
    b, yb = make_synthetic(SMALL, 40)
    assert a.tobytes() == b.tobytes() and np.array_equal(ya, yb)
    c, _ = make_synthetic(SyntheticConfig(num_classes=25, image_size=32, seed=4), 40)
    assert not np.array_equal(a, c)
    for split in ("val", "probe"):
        d, _ = make_synthetic(SMALL, 40, split)
        assert not np.array_equal(a, d)


def test_index_stable_whatever_n_or_start():
    # 300 images span two render chunks; the slices below cross the chunk boundary at 256.
    x, y = make_synthetic(SMALL, 300)
    head, yh = make_synthetic(SMALL, 7)
    assert head.tobytes() == x[:7].tobytes() and np.array_equal(yh, y[:7])
    mid, ym = make_synthetic(SMALL, 40, start=250)
    assert mid.tobytes() == x[250:290].tobytes() and np.array_equal(ym, y[250:290])
    one, _ = make_synthetic(SMALL, 1, start=299)
    assert one.tobytes() == x[299:].tobytes()
    empty, ye = make_synthetic(SMALL, 0)
    assert empty.shape == (0, 32, 32, 3) and ye.shape == (0,)


def test_resolution_224():
    x, y = make_synthetic(SyntheticConfig(image_size=224), 3, "probe")
    assert x.shape == (3, 224, 224, 3) and x.dtype == np.uint8
    assert x.std() > 20


@pytest.mark.parametrize("k", [100, 1000, MAX_CLASSES])
def test_many_classes(k):
    cfg = SyntheticConfig(num_classes=k, image_size=16)
    names = class_names(cfg)
    assert len(names) == k and len(set(names)) == k
    _, y = make_synthetic(cfg, k)
    assert np.array_equal(np.sort(y), np.arange(k))  # the first block holds every class once


def test_class_names_readable():
    names = class_names(SyntheticConfig())
    assert names[0] == "red-circle-solid"
    assert all(re.fullmatch(r"[a-z]+-[a-z]+-[a-z]+(-outlined)?", n) for n in names)
    assert any(n.endswith("-outlined") for n in class_names(SyntheticConfig(num_classes=MAX_CLASSES)))


def test_small_class_sets_differ_in_two_factors():
    f = class_factors(45)[:, :3]
    diff = (f[:, None, :] != f[None, :, :]).sum(-1)
    off_diag = diff[~np.eye(45, dtype=bool)]
    assert off_diag.min() >= 2
    assert len({tuple(r) for r in class_factors(MAX_CLASSES)}) == MAX_CLASSES


def test_classes_share_appearance_within_class():
    # The object's hue is a class factor: the class's images agree more with each other than with others.
    x, y = make_synthetic(SMALL, 250)
    px = x.reshape(len(x), -1, 3).astype(float)
    saturated = (px.max(-1) - px.min(-1)) > 60  # object pixels; the background is near grey
    obj_colour = (px * saturated[..., None]).sum(1) / np.maximum(saturated.sum(1), 1)[:, None]  # (N, 3)
    within = np.mean([obj_colour[y == c].std(0).mean() for c in range(25)])
    assert within < 0.5 * obj_colour.std(0).mean()


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError):
        SyntheticConfig(num_classes=1)
    with pytest.raises(ValueError):
        SyntheticConfig(num_classes=MAX_CLASSES + 1)
    with pytest.raises(ValueError):
        SyntheticConfig(image_size=4)
    with pytest.raises(ValueError, match="split"):
        make_synthetic(SMALL, 2, "test")
    cfg = SyntheticConfig(num_classes=100, image_size=48, seed=9, noise=2.0)
    d = cfg.to_dict()
    assert d["kind"] == "synthetic"
    assert SyntheticConfig.from_dict(d) == cfg


# --- image folders ---------------------------------------------------------------------------


def _write_png(path: Path, colour=(255, 0, 0), size=(12, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_list_image_folder(tmp_path):
    _write_png(tmp_path / "cat" / "b.png")
    _write_png(tmp_path / "cat" / "a.PNG")  # extension matched case-insensitively
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0\0")
    _write_png(tmp_path / "dog" / "sub" / "c.png")
    _write_png(tmp_path / "dog" / ".hidden.png")
    (tmp_path / "empty").mkdir()
    _write_png(tmp_path / ".git" / "x.png")
    paths, labels, names = list_image_folder(tmp_path)
    assert names == ["cat", "dog"]
    assert [Path(p).name for p in paths] == ["a.PNG", "b.png", "c.png"]
    assert labels.dtype == np.int64 and labels.tolist() == [0, 0, 1]


def test_list_image_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        list_image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        list_image_folder(tmp_path)  # empty
    _write_png(tmp_path / "loose.png")
    with pytest.raises(ValueError, match="sub-folder per class"):
        list_image_folder(tmp_path)
    _write_png(tmp_path / "only" / "a.png")
    with pytest.raises(ValueError, match="only one class"):
        list_image_folder(tmp_path)


# --- tf.data ---------------------------------------------------------------------------------


def _collect(ds, batches=None):
    xs, ys = [], []
    for i, (xb, yb) in enumerate(ds):
        if batches is not None and i >= batches:
            break
        xs.append(xb.numpy())
        ys.append(yb.numpy())
    return np.concatenate(xs), np.concatenate(ys)


@pytest.fixture(scope="module")
def tiny():
    return make_synthetic(SyntheticConfig(num_classes=5, image_size=16), 20)


def test_dataset_plain_pass_matches_numpy_preprocessing(tiny):
    x, y = tiny
    spec = PreprocessSpec.from_dict({"kind": "meanstd", "mean": [120, 110, 100], "std": [60, 55, 50]})
    gx, gy = _collect(make_dataset(x, y, 8, 16, preprocessing=spec))
    assert gx.dtype == np.float32 and gx.shape == (20, 16, 16, 3)
    np.testing.assert_allclose(gx, apply_preprocessing(x, spec), rtol=0, atol=1e-6)
    assert np.array_equal(gy, y)
    # default preprocessing is scale01
    gx01, _ = _collect(make_dataset(x, y, 8, 16))
    np.testing.assert_allclose(gx01, x / np.float32(255), rtol=0, atol=1e-7)


def test_dataset_shuffle_seeded_and_reshuffles(tiny):
    x, y = tiny
    a = make_dataset(x, y, 5, 16, shuffle=True, seed=1)
    b = make_dataset(x, y, 5, 16, shuffle=True, seed=1)
    xa1, ya1 = _collect(a)
    _, ya2 = _collect(a)  # second pass
    _, yb1 = _collect(b)
    assert np.array_equal(ya1, yb1)
    assert sorted(ya1.tolist()) == sorted(y.tolist())
    assert not np.array_equal(ya1, ya2)
    assert not np.array_equal(ya1, y)
    order = [int(np.nonzero((x / np.float32(255) == img).all(axis=(1, 2, 3)))[0][0]) for img in xa1]
    assert np.array_equal(y[order], ya1)  # images and labels stay paired


def test_dataset_augment_seeded_bounded_and_different(tiny):
    x, y = tiny
    a1, ya1 = _collect(make_dataset(x, y, 10, 16, augment=True, seed=7))
    a2, _ = _collect(make_dataset(x, y, 10, 16, augment=True, seed=7))
    a3, _ = _collect(make_dataset(x, y, 10, 16, augment=True, seed=8))
    plain, _ = _collect(make_dataset(x, y, 10, 16))
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, a3)
    assert not np.allclose(a1, plain)
    assert np.array_equal(ya1, y)
    assert a1.min() >= 0.0 and a1.max() <= 1.0


def test_dataset_repeat_fresh_augmentation(tiny):
    x, y = tiny
    ds = make_dataset(x, y, 20, 16, augment=True, seed=0, repeat=True)
    got, labels = _collect(ds, batches=3)
    assert got.shape == (60, 16, 16, 3)
    assert np.array_equal(labels, np.tile(y, 3))
    assert not np.array_equal(got[:20], got[20:40])  # each epoch draws new augmentations


def test_dataset_from_paths_decodes_resizes_and_skips_broken(tmp_path):
    _write_png(tmp_path / "red" / "a.png", (255, 0, 0), (40, 20))
    _write_png(tmp_path / "red" / "b.png", (250, 0, 0), (7, 9))
    _write_png(tmp_path / "blue" / "a.png", (0, 0, 255), (16, 16))
    buf = io.BytesIO()
    Image.new("RGB", (30, 30), (0, 0, 250)).save(buf, "JPEG")
    (tmp_path / "blue" / "b.jpg").write_bytes(buf.getvalue())
    (tmp_path / "blue" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    paths, labels, names = list_image_folder(tmp_path)
    assert names == ["blue", "red"]
    gx, gy = _collect(make_dataset(paths, labels, 2, (12, 10), preprocessing={"kind": "none"}))
    assert gx.shape == (4, 12, 10, 3)
    assert sorted(gy.tolist()) == [0, 0, 1, 1]
    for img, label in zip(gx, gy):
        want = (0, 0, 250) if label == 0 else (250, 0, 0)
        np.testing.assert_allclose(img.mean((0, 1)), want, atol=6)


def test_dataset_resizes_arrays_and_validates(tiny):
    x, y = tiny
    gx, _ = _collect(make_dataset(x, y, 20, (8, 8)))
    assert gx.shape == (20, 8, 8, 3)
    with pytest.raises(ValueError, match="labels"):
        make_dataset(x, y[:5], 4, 16)
    with pytest.raises(ValueError):
        make_dataset(x.astype(np.float32), y, 4, 16)
