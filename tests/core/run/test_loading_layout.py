"""Keras 3 weights files read straight from their datasets, by the layout Keras loads them in."""
from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

from core.run import weightlayout
from core.run.loading import load_model_noted, read_weights_file
from core.training.models import ArchConfig, build_seed_net


def small_net(seed: int = 0) -> keras.Model:
    return build_seed_net(ArchConfig(input_size=16, widths=(8, 8), convs=(1, 1), residual_blocks=(2,),
                                     se_blocks=(1, 2), dense_units=(8,), num_classes=3), seed=seed)


def keras_values(path: Path) -> dict[str, np.ndarray]:
    return {v.path: v.numpy() for v in keras.saving.load_model(path, compile=False).weights}


def save_both(model: keras.Model, d: Path, stem: str) -> dict[str, Path]:
    paths = {"keras": d / f"{stem}.keras", "weights": d / f"{stem}.weights.h5"}
    model.save(paths["keras"])
    model.save_weights(paths["weights"])
    return paths


def assert_equal_values(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    assert set(got) == set(ref)
    for k, a in ref.items():
        assert got[k].dtype == a.dtype, k
        np.testing.assert_array_equal(got[k], a, err_msg=k)


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("fmt", ["keras", "weights"])
def test_direct_reads_equal_keras_loads(tmp_path: Path, fmt: str, overwrite: bool) -> None:
    files = [save_both(small_net(seed=s), tmp_path, f"c{s}") for s in (1, 2, 3)]
    arch = small_net(seed=9)
    for f in files:
        assert_equal_values(read_weights_file(f[fmt], arch, overwrite=overwrite), keras_values(f["keras"]))
    layouts = weightlayout.LAYOUTS[arch]
    assert len(layouts) == 1 and None not in layouts.values()  # learnt once, then every file read directly
    if not overwrite:  # the architecture's own values are left alone
        assert not np.array_equal(arch.weights[0].numpy(), keras_values(files[-1]["keras"])[arch.weights[0].path])


def test_weights_that_cannot_carry_markers_are_loaded_by_keras(tmp_path: Path) -> None:
    def net(seed: int) -> keras.Model:
        inp = keras.Input((4,))
        h = layers.Dense(3, name="half", dtype="float16")(inp)  # float16 cannot hold every marker exactly
        return keras.Model(inp, layers.Dense(2, name="out")(h))

    arch = net(0)
    for s in (1, 2):
        src = net(s)
        for v in src.weights:
            v.assign(np.random.default_rng(s).normal(size=v.shape).astype(v.dtype))
        src.save(tmp_path / f"m{s}.keras")
        assert_equal_values(read_weights_file(tmp_path / f"m{s}.keras", arch, overwrite=True),
                            keras_values(tmp_path / f"m{s}.keras"))
    assert list(weightlayout.LAYOUTS[arch].values()) == [None]


def test_architecture_without_the_files_weights(tmp_path: Path) -> None:
    path = save_both(small_net(seed=1), tmp_path, "arch")["keras"]
    with_weights = load_model_noted(path).model
    without = load_model_noted(path, weights=False).model
    assert [(v.path, tuple(v.shape)) for v in without.weights] == [(v.path, tuple(v.shape)) for v in with_weights.weights]
    ref = keras_values(path)
    assert all(not v.numpy().any() for v in without.weights)  # zeros: no random values drawn to be overwritten
    assert_equal_values({v.path: v.numpy() for v in with_weights.weights}, ref)


def test_compressed_and_big_endian_datasets_read_alike(tmp_path: Path) -> None:
    """Contiguous datasets are read from their bytes (any byte order); compressed ones through HDF5."""
    import h5py

    src = save_both(small_net(seed=1), tmp_path, "c1")
    packed = tmp_path / "packed.weights.h5"
    with h5py.File(src["weights"], "r") as a, h5py.File(packed, "w") as b:
        b.attrs.update(a.attrs)
        k = [0]

        def copy(name: str, obj) -> None:
            if isinstance(obj, h5py.Group):
                b.require_group(name).attrs.update(obj.attrs)
                return
            k[0] += 1
            if obj.ndim and k[0] % 2:
                b.create_dataset(name, data=obj[()], chunks=True, compression="gzip")
            else:
                b.create_dataset(name, data=obj[()].astype(obj.dtype.newbyteorder(">")))
            b[name].attrs.update(obj.attrs)

        a.visititems(copy)
    datasets = weightlayout.h5_datasets(packed.read_bytes())
    assert {d.offset is None for d in datasets} == {True, False}
    assert any(d.dtype.startswith(">") and d.offset is not None for d in datasets)
    arch = small_net(seed=9)
    for f in (src["weights"], packed):
        assert_equal_values(read_weights_file(f, arch, overwrite=True), keras_values(src["keras"]))
    assert None not in weightlayout.LAYOUTS[arch].values()


def test_a_learnt_layout_serves_the_next_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What one process learnt is read from the cache by the next (a new architecture object stands for it)."""
    monkeypatch.setenv("ADE_LAYOUT_CACHE", str(tmp_path / "layouts"))
    files = [save_both(small_net(seed=s), tmp_path, f"c{s}")["keras"] for s in (1, 2)]
    read_weights_file(files[0], small_net(seed=8), overwrite=True)
    assert len(list((tmp_path / "layouts").glob("*.json"))) == 1
    learnt: list[int] = []
    real = weightlayout._learn_layout
    monkeypatch.setattr(weightlayout, "_learn_layout", lambda *a: learnt.append(1) or real(*a))
    arch = small_net(seed=9)
    assert_equal_values(read_weights_file(files[1], arch, overwrite=True), keras_values(files[1]))
    assert learnt == []  # no Keras load: the stored layout was used
    # a stored layout that no longer fits (here: shapes) is ignored and learnt again
    for f in (tmp_path / "layouts").glob("*.json"):
        f.write_text(json.dumps(list(reversed(json.loads(f.read_text())))))
    assert_equal_values(read_weights_file(files[1], small_net(seed=7), overwrite=True), keras_values(files[1]))
    assert learnt == [1]


def test_no_layout_cache_when_switched_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADE_LAYOUT_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = save_both(small_net(seed=1), tmp_path, "c1")["keras"]
    assert_equal_values(read_weights_file(path, small_net(seed=9)), keras_values(path))
    assert not (tmp_path / "xdg").exists()


def test_reads_directly_once_the_layout_is_known(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.run.loading import reads_directly

    monkeypatch.setenv("ADE_LAYOUT_CACHE", str(tmp_path / "layouts"))
    files = save_both(small_net(seed=1), tmp_path, "c1")
    legacy = tmp_path / "legacy.h5"
    keras.saving.load_model(files["keras"], compile=False).save(legacy)
    arch = small_net(seed=9)
    assert not reads_directly(files["keras"], arch) and not reads_directly(files["weights"], arch)
    read_weights_file(files["keras"], arch)
    assert reads_directly(files["keras"], arch)
    assert reads_directly(files["keras"], small_net(seed=8))  # another process: the kept layout
    assert not reads_directly(legacy, arch)  # legacy HDF5: always a Keras load
    assert not reads_directly(tmp_path / "missing.keras", arch)
