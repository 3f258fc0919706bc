"""Keras 3 weights files read straight from their datasets, by the layout Keras loads them in."""
from __future__ import annotations

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
    kernel = next(v for v in without.weights if v.path.endswith("kernel"))
    assert not np.array_equal(kernel.numpy(), ref[kernel.path])
    assert_equal_values({v.path: v.numpy() for v in with_weights.weights}, ref)
