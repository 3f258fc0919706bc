"""Importing folders of foreign per-epoch checkpoints: names, architectures, trust, history, references."""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from keras import layers

from core.training.importer import (
    CheckpointImportError, ImportResult, add_import, csvlogger_history, dedupe_epochs, epoch_number,
    import_checkpoints,
)
from core.run.loading import UnsafeModelError
from core.run.runs import Run, RunError

Weights = dict[str, np.ndarray]
N_EPOCHS = 3
TESTDATA = Path(__file__).resolve().parents[3].parent / "shared" / "testdata"
LEGACY = TESTDATA / "legacy-keras2" / "keras_mnist_model.h5"
needs_legacy = pytest.mark.skipif(not LEGACY.exists(),
                                  reason=f"shared test data not found at {LEGACY} (project cloned alone)")


def tiny_cnn(width: int = 4, scale_lambda: bool = False) -> keras.Model:
    """Explicit layer names so every save of it, in any order of construction, has the same names."""
    inp = keras.Input((8, 8, 3), name="image")
    x = layers.Lambda(lambda t: t / 255.0, name="scale")(inp) if scale_lambda else inp
    x = layers.Conv2D(width, 3, padding="same", activation="relu", name="conv")(x)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, layers.Dense(3, activation="softmax", name="out")(x), name="tiny")


def snapshot(model: keras.Model) -> Weights:
    return {v.path: np.array(v.numpy()) for v in model.weights}


def perturb(model: keras.Model, seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    for v in model.weights:
        v.assign(rng.normal(size=tuple(v.shape)).astype("float32"))
    return snapshot(model)


def assert_same(got: Weights, want: Weights) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


class Capture(keras.callbacks.Callback):
    """The weights at each epoch end: exactly what ModelCheckpoint writes in the same hook."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: dict[int, Weights] = {}

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        self.weights[epoch + 1] = snapshot(self.model)


# ---- fixtures: folders as other training scripts leave them ----------------------------------


@pytest.fixture(scope="module")
def legacy_h5(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, Weights]]:
    """Legacy .hdf5 full models as Keras 2 scripts wrote them, plus the usual debris."""
    d = tmp_path_factory.mktemp("legacy")
    model = tiny_cnn()
    want = {}
    for k, loss in zip(range(1, N_EPOCHS + 1), (0.52, 0.47, 0.45)):
        want[k] = perturb(model, k)
        model.save(d / f"weights.{k:02d}-{loss:.2f}.hdf5")
    old = d / "weights.03-0.49.hdf5"  # an earlier attempt at epoch 3 (a restarted training)
    perturb(model, 99)
    model.save(old)
    mtime = (d / "weights.03-0.45.hdf5").stat().st_mtime_ns
    os.utime(old, ns=(mtime - 10**9, mtime - 10**9))
    torn = d / "weights.02-0.44.hdf5"  # the newest file for epoch 2, but cut short: the older one stays
    model.save(torn)
    with open(torn, "r+b") as f:
        f.truncate(100)
    tiny_cnn(width=6).save(d / "weights.04-0.40.hdf5")  # someone changed the model mid-way
    model.save(d / "weights.05-0.38.hdf5")
    with open(d / "weights.05-0.38.hdf5", "r+b") as f:  # killed while writing
        f.truncate(os.path.getsize(d / "weights.05-0.38.hdf5") // 2)
    model.save(d / "best_model.hdf5")
    (d / "README.txt").write_text("notes\n")
    for name in ("cp.ckpt.index", "cp.ckpt.data-00000-of-00001", "checkpoint"):  # tf.keras TF format
        (d / name).write_bytes(b"\0")
    (d / "saved").mkdir()
    (d / "saved" / "saved_model.pb").write_bytes(b"\0")
    return d, want


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One real model.fit with ModelCheckpoint (.keras and .weights.h5) and CSVLogger."""
    full = tmp_path_factory.mktemp("fit_keras")
    weights = tmp_path_factory.mktemp("fit_weights")
    other = tmp_path_factory.mktemp("arch")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, 16)
    model = tiny_cnn()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    cap = Capture()
    model.fit(x, y, validation_data=(x[:4], y[:4]), epochs=N_EPOCHS, batch_size=8, verbose=0, callbacks=[
        keras.callbacks.ModelCheckpoint(str(full / "ckpt_{epoch}.keras")),
        keras.callbacks.ModelCheckpoint(str(weights / "cp-{epoch:04d}.ckpt.weights.h5"), save_weights_only=True),
        keras.callbacks.CSVLogger(str(full / "training.log")),
        cap,
    ])
    (weights / "model.json").write_text(model.to_json())
    model.save(other / "architecture.keras")
    return {"keras": full, "weights": weights, "arch_keras": other / "architecture.keras",
            "arch_json": weights / "model.json", "want": cap.weights}


@pytest.fixture(scope="module")
def lambda_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, Weights]]:
    d = tmp_path_factory.mktemp("lambda")
    model = tiny_cnn(scale_lambda=True)
    want = {}
    for k in (1, 2):
        want[k] = perturb(model, k)
        model.save(d / f"model_epoch={k}.keras")
    return d, want


@pytest.fixture(scope="module")
def legacy_result(legacy_h5, tmp_path_factory) -> tuple[ImportResult, list[tuple[int, int, str]]]:
    calls: list[tuple[int, int, str]] = []
    result = import_checkpoints(legacy_h5[0], tmp_path_factory.mktemp("runs"), "legacy",
                                progress=lambda *a: calls.append(a))
    return result, calls


# ---- file names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, epoch", [
    ("weights.07-0.52.hdf5", 7),
    ("weights.01-0.52.hdf5", 1),
    ("model-003.h5", 3),
    ("ckpt_12.keras", 12),
    ("epoch_5.weights.h5", 5),
    ("cp-0010.ckpt.weights.h5", 10),
    ("model_epoch=3.keras", 3),
    ("weights-improvement-05-0.84.hdf5", 5),   # the classic Keras blog pattern: first integer
    ("resnet50_epoch_08.keras", 8),            # the epoch word beats the first integer (50)
    ("resnet50-ckpt-4.h5", 4),                 # so does a checkpoint word
    ("vgg16_ep12_val0.91.h5", 12),
    ("Epoch-0042.KERAS", 42),
    ("0.61-17.hdf5", 17),                      # a metric value is not an epoch
    ("step_3000_epoch_2.h5", 2),
    ("model.keras", None),
    ("best_model.hdf5", None),
    ("final.weights.h5", None),
])
def test_epoch_number_from_file_name(name: str, epoch: int | None) -> None:
    assert epoch_number(name) == epoch


def test_duplicate_epochs_keep_the_newest() -> None:
    a, b, c = Path("a-3.h5"), Path("b-3.h5"), Path("c-4.h5")
    newness = {a: 2, b: 1, c: 0}
    kept, skipped = dedupe_epochs([(3, a), (3, b), (4, c)], newness=newness.__getitem__)
    assert kept == [(3, a), (4, c)]
    assert skipped == [(b, "another file for epoch 3; kept the newer a-3.h5")]


# ---- CSVLogger -------------------------------------------------------------------------------------


def test_csvlogger_history_conversion() -> None:
    text = ("epoch;acc;loss;lr;val_acc;val_loss;top5\n"
            "0;0.5;1.2;0.001;0.4;1.3;0.9\n"
            "1;0.6;1.0;0.001;0.5;1.1;0.95\n"
            "epoch;acc;loss;lr;val_acc;val_loss;top5\n"      # CSVLogger(append=True) after a restart
            "1;0.65;0.9;0.0005;0.55;1.0;0.96\n"
            "2;0.7;0.8;;0.6;nan;0.97\n")
    df = csvlogger_history(text)
    assert list(df["mini_epoch"]) == [1, 2, 3]
    assert list(df.columns) == ["mini_epoch", "images_seen", "wall_time", "loss", "accuracy", "val_loss",
                                "val_accuracy", "lr"]
    assert df.loc[1, "accuracy"] == 0.65 and df.loc[1, "lr"] == 0.0005  # the later row for epoch 1 wins
    assert math.isnan(df.loc[2, "lr"]) and math.isnan(df.loc[2, "val_loss"])
    assert df["images_seen"].isna().all()
    assert csvlogger_history("step,loss\n1,2\n").empty


# ---- legacy .hdf5 full models --------------------------------------------------------------------


def test_legacy_h5_folder_imported_and_debris_reported(legacy_h5, legacy_result) -> None:
    src, _ = legacy_h5
    result, calls = legacy_result
    assert [k for k, _ in result.imported] == [1, 2, 3]
    assert dict(result.imported)[3] == (src / "weights.03-0.45.hdf5").resolve()
    reasons = {p.name: r for p, r in result.skipped}
    assert set(reasons) == {"weights.02-0.44.hdf5", "weights.03-0.49.hdf5", "weights.04-0.40.hdf5",
                            "weights.05-0.38.hdf5", "best_model.hdf5", "cp.ckpt.index", "saved"}
    assert "TensorFlow-format checkpoint" in reasons["cp.ckpt.index"]
    assert "SavedModel" in reasons["saved"]
    assert dict(result.imported)[2] == (src / "weights.02-0.47.hdf5").resolve()
    assert "truncated" in reasons["weights.02-0.44.hdf5"]
    assert "kept the newer weights.03-0.45.hdf5" in reasons["weights.03-0.49.hdf5"]
    assert "another architecture" in reasons["weights.04-0.40.hdf5"]
    assert "truncated" in reasons["weights.05-0.38.hdf5"]
    assert "no epoch number" in reasons["best_model.hdf5"]
    assert result.architecture_source.name == "weights.01-0.52.hdf5" and not result.trusted_code
    assert result.history_source is None
    # every file with an epoch number is verified once and reported to the progress callback
    assert [(d, t) for d, t, _ in calls] == [(i, 7) for i in range(1, 8)]
    assert calls[-1][2] == "weights.05-0.38.hdf5"


def test_legacy_run_reads_back_the_written_weights(legacy_h5, legacy_result) -> None:
    _, want = legacy_h5
    run = Run(legacy_result[0].run)
    m = run.manifest
    assert m.input_shape == (8, 8, 3) and m.mini_epoch_images == 0
    assert m.preprocessing == {"kind": "none", "source": "guess"} and "guess" in m.dataset["note"]
    assert m.training["trusted_code"] is False
    assert [c.mini_epoch for c in run.checkpoints()] == [1, 2, 3]
    assert {c.kind for c in run.checkpoints()} == {"h5-model"}
    assert run.history().empty and run.problems == []
    assert run.complete_mini_epochs() == [1, 2, 3]  # no writer in progress: no history row needed
    for k in want:
        assert_same(run.read_weights(k), want[k])


def test_imported_files_are_referenced_not_copied(legacy_h5, legacy_result) -> None:
    src, _ = legacy_h5
    run_dir = legacy_result[0].run
    entries = json.loads((run_dir / "manifest.json").read_text())["external_checkpoints"]
    assert all(Path(e["path"]).is_absolute() and Path(e["path"]).parent == src.resolve() for e in entries)
    files = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
    assert files == {"manifest.json", "model.keras"}
    assert folder_size(run_dir) < sum(Path(e["path"]).stat().st_size for e in entries)


# ---- .keras and .weights.h5 from ModelCheckpoint, CSVLogger history -------------------------------


def test_keras_checkpoints_with_csvlogger_history(fitted, tmp_path: Path) -> None:
    result = import_checkpoints(fitted["keras"], tmp_path, "fit", input_preprocessing={"kind": "scale01"},
                                class_names=["a", "b", "c"])
    assert [k for k, _ in result.imported] == [1, 2, 3] and result.skipped == ()
    assert result.history_source == fitted["keras"] / "training.log"
    run = Run(result.run)
    assert run.manifest.preprocessing == {"kind": "scale01"} and run.manifest.class_names == ("a", "b", "c")
    assert "placeholder" not in run.manifest.dataset["note"]
    assert {c.kind for c in run.checkpoints()} == {"keras-model"}
    hist = run.history()
    log = (fitted["keras"] / "training.log").read_text().splitlines()
    header, rows = log[0].split(","), [dict(zip(log[0].split(","), r.split(","))) for r in log[1:]]
    assert "accuracy" in header and "val_loss" in header
    assert list(hist["mini_epoch"]) == [1, 2, 3]
    np.testing.assert_allclose(hist["loss"], [float(r["loss"]) for r in rows], rtol=1e-6)
    np.testing.assert_allclose(hist["val_accuracy"], [float(r["val_accuracy"]) for r in rows], rtol=1e-6)
    assert run.complete_mini_epochs() == [1, 2, 3]
    model = run.load_model()
    for k, want in fitted["want"].items():
        assert_same(run.read_weights(k, architecture=model), want)


@pytest.mark.parametrize("arch", ["arch_json", "arch_keras"])
def test_weights_only_checkpoints_with_architecture_file(fitted, tmp_path: Path, arch: str) -> None:
    result = import_checkpoints(fitted["weights"], tmp_path, "w", architecture=fitted[arch])
    assert [k for k, _ in result.imported] == [1, 2, 3]
    assert result.skipped == ()  # model.json beside the checkpoints is the architecture, not debris
    run = Run(result.run)
    assert {c.kind for c in run.checkpoints()} == {"keras-weights"}
    assert run.manifest.training["architecture_source"] == str(fitted[arch].resolve())
    for k, want in fitted["want"].items():
        assert_same(run.read_weights(k), want)


def test_weights_only_without_architecture_is_explained(fitted, tmp_path: Path) -> None:
    with pytest.raises(CheckpointImportError, match="no architecture: the checkpoints hold weights only.*model.json"):
        import_checkpoints(fitted["weights"], tmp_path, "w")
    assert not (tmp_path / "w").exists()


def test_keras2_style_json_architecture(legacy_h5, tmp_path: Path) -> None:
    """A module-less (Keras 2 / legacy h5) config is rebuilt with the first legacy checkpoint's weights."""
    src, want = legacy_h5
    arch = tmp_path / "model.json"
    with h5py.File(src / "weights.01-0.52.hdf5", "r") as f:
        arch.write_text(f.attrs["model_config"])
    result = import_checkpoints(src, tmp_path / "runs", "k2", architecture=arch)
    assert [k for k, _ in result.imported] == [1, 2, 3]
    run = Run(result.run)
    for k in want:
        assert_same(run.read_weights(k), want[k])


# ---- real Keras 2.2.4 checkpoints (shared test data) ------------------------------------------------


@pytest.fixture(scope="module")
def keras2_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Epoch 1 as Keras 2 save_weights wrote it, epoch 2 a full model; plus a Lambda-free model.json."""
    if not LEGACY.exists():
        pytest.skip(f"shared test data not found at {LEGACY} (project cloned alone)")
    d = tmp_path_factory.mktemp("keras2")
    with h5py.File(LEGACY, "r") as f, h5py.File(d / "weights.01-0.09.hdf5", "w") as out:
        g = f["model_weights"]
        for key, value in g.attrs.items():
            out.attrs[key] = value
        for key in g:
            g.copy(g[key], out, name=key)
        cfg = json.loads(f.attrs["model_config"])
    full = d / "weights.02-0.05.hdf5"
    shutil.copy(LEGACY, full)
    full.chmod(0o644)
    with h5py.File(full, "r+") as f:
        f["model_weights/conv2d_1/conv2d_1/kernel:0"][...] *= 2.0
    # the rebuild-in-code workaround the refusal suggests: the weightless Lambdas become identities
    for layer in cfg["config"]["layers"]:
        if layer["class_name"] == "Lambda":
            layer["class_name"] = "Activation"
            layer["config"] = {"name": layer["config"]["name"], "activation": "linear"}
    arch = tmp_path_factory.mktemp("keras2_arch") / "model.json"
    arch.write_text(json.dumps(cfg))
    return d, arch


@needs_legacy
def test_real_keras2_lambda_checkpoints_refused_without_trust(keras2_folder, tmp_path: Path) -> None:
    with pytest.raises(UnsafeModelError, match="lambda_1.*lambda_13.*--trust-code"):
        import_checkpoints(keras2_folder[0], tmp_path, "k2")


@needs_legacy
def test_real_keras2_checkpoints_with_lambda_free_json(keras2_folder, tmp_path: Path) -> None:
    src, arch = keras2_folder
    result = import_checkpoints(src, tmp_path, "k2", architecture=arch)
    assert [k for k, _ in result.imported] == [1, 2] and result.skipped == ()
    run = Run(result.run)
    assert run.manifest.input_shape == (28, 28, 1) and not run.manifest.training["trusted_code"]
    assert [c.kind for c in run.checkpoints()] == ["h5-weights", "h5-model"]
    model = run.load_model()  # no Lambda left: safe mode is enough
    w1, w2 = run.read_weights(1, architecture=model), run.read_weights(2, architecture=model)
    with h5py.File(LEGACY, "r") as f:
        kernel = f["model_weights/conv2d_1/conv2d_1/kernel:0"][()]
        np.testing.assert_array_equal(w1["conv2d_1/kernel"], kernel)
        np.testing.assert_array_equal(w2["conv2d_1/kernel"], 2.0 * kernel)
        np.testing.assert_array_equal(w2["dense_2/bias"], f["model_weights/dense_2/dense_2/bias:0"][()])


@needs_legacy
def test_real_keras2_trusted_lambda_failure_is_explained(keras2_folder, tmp_path: Path) -> None:
    """Its Lambda bytecode may come from an older Python; then the error must say why, not 'weights only'."""
    try:
        result = import_checkpoints(keras2_folder[0], tmp_path, "k2", trust=True)
    except CheckpointImportError as e:
        assert "weights.02-0.05.hdf5" in str(e) and "Lambda" in str(e)
    else:
        assert result.trusted_code and [k for k, _ in result.imported] == [1, 2]


# ---- Lambda layers and trust --------------------------------------------------------------------


def test_lambda_refused_without_trust_then_accepted(lambda_folder, tmp_path: Path) -> None:
    src, want = lambda_folder
    with pytest.raises(UnsafeModelError, match="Lambda.*scale.*--trust-code"):
        import_checkpoints(src, tmp_path, "lam")
    assert not (tmp_path / "lam").exists()
    result = import_checkpoints(src, tmp_path, "lam", trust=True)
    assert result.trusted_code and [k for k, _ in result.imported] == [1, 2]
    run = Run(result.run)
    assert run.manifest.training["trusted_code"] is True
    with pytest.raises(UnsafeModelError):  # readers must ask again
        run.load_model()
    model = run.load_model(trust=True)
    for k in want:
        assert_same(run.read_weights(k, architecture=model), want[k])


def test_lambda_json_architecture_needs_trust(lambda_folder, tmp_path: Path) -> None:
    src, _ = lambda_folder
    arch = tmp_path / "model.json"
    arch.write_text(tiny_cnn(scale_lambda=True).to_json())
    with pytest.raises(UnsafeModelError, match="scale"):
        import_checkpoints(src, tmp_path / "runs", "lam", architecture=arch)


# ---- refusals -------------------------------------------------------------------------------------


def test_non_image_model_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    inp = keras.Input((4,), name="x")
    keras.Model(inp, layers.Dense(2, name="d")(inp)).save(src / "model-001.keras")
    with pytest.raises(CheckpointImportError, match=r"\(4,\).*\(H, W, C\)"):
        import_checkpoints(src, tmp_path / "runs", "vec")


def test_existing_run_bad_name_and_empty_folder(legacy_h5, legacy_result, tmp_path: Path) -> None:
    result, _ = legacy_result
    with pytest.raises(CheckpointImportError, match="already exists"):
        import_checkpoints(legacy_h5[0], result.run.parent, result.run.name)
    with pytest.raises(RunError):
        import_checkpoints(legacy_h5[0], tmp_path, "../escape")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "final.keras").write_bytes(b"")
    # a lone file needs no number (it is mini-epoch 1): this one is refused for being empty
    with pytest.raises(CheckpointImportError, match="final.keras: not a valid .keras archive"):
        import_checkpoints(tmp_path / "empty", tmp_path, "e")
    with pytest.raises(CheckpointImportError, match="class names"):
        import_checkpoints(legacy_h5[0], tmp_path, "c", class_names=["only-one"])


def test_failed_write_leaves_no_run(legacy_h5, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*_a, **_k) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr("core.training.importer.RunWriter.create", disk_full)
    with pytest.raises(OSError, match="No space"):
        import_checkpoints(legacy_h5[0], tmp_path, "full")
    assert not (tmp_path / "full").exists()


# ---- command line ------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core")
    add_import(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_imports_and_reports(legacy_h5, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["import", str(legacy_h5[0]), "--name", "cli", "--runs-root", str(tmp_path),
                                 "--preprocessing", "scale_pm1"])
    assert args.func(args) == 0
    out, err = capsys.readouterr()
    assert "imported 3 checkpoint(s)" in out and "mini-epochs 1 to 3" in out
    assert "skipped weights.04-0.40.hdf5: checkpoint from another architecture" in out
    assert "verifying" in err  # the progress bar
    assert Run(tmp_path / "cli").manifest.preprocessing == {"kind": "scale_pm1"}


def test_cli_user_errors(lambda_folder, tmp_path: Path) -> None:
    from core.errors import UserError

    parser = _parser()
    args = parser.parse_args(["import", str(lambda_folder[0]), "--name", "x", "--runs-root", str(tmp_path)])
    with pytest.raises(UserError, match="--trust-code"):
        args.func(args)
    args = parser.parse_args(["import", str(tmp_path / "missing"), "--name", "x", "--runs-root", str(tmp_path)])
    with pytest.raises(UserError, match="not a folder"):
        args.func(args)
    help_text = parser._subparsers._group_actions[0].choices["import"].format_help()
    assert "--trust-code" in help_text and "malicious" in help_text
    with pytest.raises(SystemExit):
        parser.parse_args(["import", "src"])  # --name is required
