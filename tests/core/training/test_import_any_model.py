"""Imported runs of models the project has never seen: Sequential series, a keras.applications backbone
inside a Sequential, probes from folders, pixel scaling, resize fitting, file ordering, bad input."""
from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from core.__main__ import main
from core.analysis.sweep import SweepOptions, sweep
from core.engine.engine import RunEngine, run_probe_set
from core.engine.graph import build_graph
from core.run.images import load_probe_image
from core.training.importer import CheckpointImportError, import_checkpoints, order_checkpoints
from core.run.runs import Run

FAST = SweepOptions(train_mode=False, gradients=False)


def _png(path: Path, seed: int, size: tuple[int, int] = (37, 29)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def sequential_folder(tmp_path_factory) -> Path:
    """A Keras 3 Sequential model saved after each of 3 epochs, as a ModelCheckpoint would."""
    d = tmp_path_factory.mktemp("seq")
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input((16, 16, 3)), keras.layers.Rescaling(1 / 255, name="scale"),
        keras.layers.Conv2D(6, 3, activation="relu", name="c1"), keras.layers.BatchNormalization(name="bn"),
        keras.layers.GlobalAveragePooling2D(name="gap"), keras.layers.Dense(3, activation="softmax", name="out")])
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (32, 16, 16, 3)).astype("float32"), rng.integers(0, 3, 32)
    for epoch in range(1, 4):
        model.fit(x, y, epochs=1, batch_size=16, verbose=0)
        model.save(d / f"model-{epoch:02d}.keras")
    return d


@pytest.fixture(scope="module")
def transfer_folder(tmp_path_factory) -> Path:
    """MobileNetV3Small (SE blocks, its own Rescaling) with a new head inside a Sequential; one file
    whose name carries a version number, not an epoch."""
    d = tmp_path_factory.mktemp("transfer")
    base = keras.applications.MobileNetV3Small(input_shape=(48, 48, 3), include_top=False, weights=None)
    model = keras.Sequential([keras.Input((48, 48, 3)), base, keras.layers.GlobalAveragePooling2D(name="pool"),
                              keras.layers.Dense(4, activation="softmax", name="head")], name="transfer")
    model.save(d / "transfer_v2_best.keras")
    return d


def test_sequential_series_imports_sweeps_and_diagnoses(sequential_folder: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    probes = tmp_path / "probes"
    for cls in ("a", "b", "c"):
        (probes / cls).mkdir(parents=True)
        _png(probes / cls / "1.png", ord(cls))
    rc = main(["import", str(sequential_folder), "--name", "seq", "--runs-root", str(tmp_path),
               "--probes", str(probes)])
    err = capsys.readouterr()
    assert rc == 0, err.err
    # the plan comes first, then the result; the Rescaling layer was found
    assert "model-01.keras  -> 1" in err.err and "model-03.keras  -> 3" in err.err
    assert "detected in the model" in err.out and "scale (Rescaling" in err.out
    run = Run(tmp_path / "seq")
    assert run.manifest.preprocessing["source"] == "detected" and run.manifest.raw["input"]["fit"] == "resize"
    assert run.manifest.class_names == ("a", "b", "c")
    assert run_probe_set(run).labels.tolist() == [0, 1, 2]
    assert main(["diagnose", str(tmp_path / "seq"), "--fast"]) == 0
    res = sweep(run, options=FAST)
    assert res.mini_epochs == [1, 2, 3] and "c1" in res.layer_order


def test_backbone_in_sequential_unlabelled_probes_version_number(transfer_folder: Path, tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _png(imgs / "x.png", 3)
    _png(imgs / "y.png", 4)
    plans = []
    result = import_checkpoints(transfer_folder, tmp_path, "transfer", probes=[imgs], plan=plans.append)
    assert plans == [[(1, transfer_folder / "transfer_v2_best.keras",
                       "the only file (the number in its name may be a version, not an epoch)")]]
    assert result.imported[0][0] == 1 and result.probes == 2
    run = Run(result.run)
    assert run.manifest.preprocessing["kind"] == "none" and run.manifest.preprocessing["source"] == "detected"
    res = sweep(run, options=FAST)
    assert len(res.se_blocks) == 9 and all(b.startswith("MobileNetV3Small/") for b in res.se_blocks)
    assert run_probe_set(run).labels.tolist() == [-1, -1]


def test_resize_gates_equal_a_plain_submodel_on_tf_image_resize(transfer_folder: Path, tmp_path: Path) -> None:
    result = import_checkpoints(transfer_folder, tmp_path, "t2")
    run = Run(result.run)
    engine = RunEngine(run)
    image = _png(tmp_path / "p.png", 7, size=(61, 90))
    x = load_probe_image(image, (48, 48), fit="resize", as_float=True)
    gates = [b.gate for b in engine.se_blocks]
    acts = engine.activations(run.checkpoints()[0], x[None])
    # the independent computation: decode with TensorFlow, tf.image.resize, a plain Keras sub-model
    pixels = tf.io.decode_png(tf.io.read_file(str(image)), channels=3)
    resized = tf.image.resize(pixels[None], (48, 48))
    base = run.load_model().layers[0]  # the architecture file holds the first checkpoint's values
    inner = build_graph(base)
    plain = keras.Model(base.inputs, [inner.outputs[id(inner.op_named(g.split("/", 1)[1]))] for g in gates])
    for g, ref in zip(gates, plain(resized)):
        np.testing.assert_allclose(acts[g].reshape(ref.shape), ref.numpy(), atol=1e-5, rtol=0)


def test_order_by_name_and_mtime_and_shared_errors_printed_once(tmp_path: Path) -> None:
    files = []
    for i, name in enumerate(["final.h5", "best.h5", "last.h5"]):
        p = tmp_path / name
        p.write_bytes(b"x")
        os.utime(p, ns=(10**18 + i, 10**18 + i))
        files.append(p)
    by_name, _ = order_checkpoints(files, "name")
    assert [(k, p.name) for k, p, _ in by_name] == [(1, "best.h5"), (2, "final.h5"), (3, "last.h5")]
    by_time, _ = order_checkpoints(files, "mtime")
    assert [p.name for _, p, _ in by_time] == ["final.h5", "best.h5", "last.h5"]
    found, skipped = order_checkpoints(files, "number")
    assert not found and len(skipped) == 3 and all("--order name" in r for _, r in skipped)
    with pytest.raises(CheckpointImportError) as e:
        import_checkpoints(tmp_path, tmp_path / "runs", "r")
    # one reason, three files: said once
    assert str(e.value).count("no epoch number") == 1 and "best.h5, final.h5, last.h5" in str(e.value)


def test_bad_input_changes_nothing(sequential_folder: Path, tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    before = sorted(p.name for p in sequential_folder.iterdir())
    assert main(["import", str(sequential_folder), "--name", "a", "--runs-root", str(runs),
                 "--preprocessing", "mean_std:1,2/3,4,5"]) != 0
    assert "3 means and 3 standard deviations" in capsys.readouterr().err
    assert main(["import", str(sequential_folder), "--name", "b", "--runs-root", str(runs),
                 "--probes", str(empty)]) != 0
    assert "no images" in capsys.readouterr().err
    assert not runs.exists() or not any(runs.iterdir())
    assert sorted(p.name for p in sequential_folder.iterdir()) == before


def test_caffe_and_mean_std_scaling_recorded(sequential_folder: Path, tmp_path: Path) -> None:
    r = import_checkpoints(sequential_folder, tmp_path, "caffe", input_preprocessing="imagenet_caffe")
    assert json.loads((r.run / "manifest.json").read_text())["input"]["preprocessing"] == {"kind": "imagenet_caffe"}
    r = import_checkpoints(sequential_folder, tmp_path, "ms", input_preprocessing="mean_std:120,115,100/60,60,60")
    assert Run(r.run).manifest.preprocessing == {"kind": "meanstd", "mean": [120.0, 115.0, 100.0],
                                                "std": [60.0, 60.0, 60.0]}


def test_trust_code_on_sweep_after_a_trusted_import(tmp_path: Path, capsys) -> None:
    src = tmp_path / "lam"
    src.mkdir()
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(2, 3, name="c"),
                              keras.layers.Lambda(lambda t: t * 2.0, name="double"),
                              keras.layers.GlobalAveragePooling2D(name="gap"), keras.layers.Dense(2, name="d")])
    model.save(src / "model_epoch_1.keras")
    runs = tmp_path / "runs"
    assert main(["import", str(src), "--name", "lam", "--runs-root", str(runs), "--trust-code",
                 "--probes", str(_png(tmp_path / "p.png", 1))]) == 0
    capsys.readouterr()
    assert main(["sweep", str(runs / "lam"), "--fast"]) != 0
    err = capsys.readouterr().err
    assert "--trust-code" in err and "Traceback" not in err
    assert main(["sweep", str(runs / "lam"), "--fast", "--trust-code"]) == 0
