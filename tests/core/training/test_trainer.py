"""Trainer: checkpoints 0..N with matching history, resume without lost or duplicated rows, CLI, signals."""
from __future__ import annotations

import dataclasses
import math
import os
import signal

import keras
import numpy as np
import pytest

from core.training.models import ArchConfig
from core.run.runs import HISTORY, Run, RunError, RunWriter
from core.training.trainer import TrainConfig, read_status, train

ARCH = ArchConfig(input_size=32, widths=(8, 8, 8), convs=(1, 1, 1), residual_blocks=(2,), se_blocks=(1, 2, 3),
                  dense_units=(16, 16), num_classes=5, stem_width=8)
CFG = TrainConfig(arch=ARCH, train_images=160, val_images=20, probe_images=6, batch_size=16,
                  mini_epoch_images=48, mini_epochs=2, learning_rate=2e-3, seed=1)
STEPS = CFG.steps_per_mini_epoch  # 3 batches per mini-epoch


def _iterations(run: Run, mini_epoch: int) -> int:
    with np.load(run.path / "resume" / f"opt_{mini_epoch:06d}.npz", allow_pickle=False) as z:
        key = next(k for k in z.files if k.split(":", 1)[1].endswith("iteration"))
        return int(z[key])


def _check_consistent(run: Run, n: int, per_me: int) -> None:
    assert [c.mini_epoch for c in run.checkpoints()] == list(range(n + 1))
    hist = run.history()
    assert hist["mini_epoch"].tolist() == list(range(1, n + 1))
    assert hist["images_seen"].tolist() == [k * per_me for k in range(1, n + 1)]
    assert np.isfinite(hist["loss"]).all() and np.isfinite(hist["accuracy"]).all()
    assert np.isfinite(hist["val_loss"]).all()
    assert (np.diff(hist["wall_time"]) > 0).all()
    assert not run.problems


def test_train_writes_checkpoints_history_and_status(tmp_path):
    run = train(CFG, tmp_path / "r")
    _check_consistent(run, 2, STEPS * CFG.batch_size)
    m = run.manifest
    assert m.training == CFG.to_dict()
    assert m.input_shape == (32, 32, 3) and len(m.class_names) == 5 and m.mini_epoch_images == 48
    x, y = run.probes()
    assert x.shape == (6, 32, 32, 3) and x.dtype == np.uint8 and y.shape == (6,)
    model = run.load_model()
    for c in run.checkpoints():  # every checkpoint loads into the saved architecture
        run.load_weights_into(model, c.mini_epoch)
    assert not np.allclose(run.read_weights(0)["classifier/kernel"], run.read_weights(2)["classifier/kernel"])
    assert _iterations(run, 2) == 2 * STEPS
    # the last optimizer state, and the options kept for `python -m core repair`
    assert sorted(p.name for p in (run.path / "resume").iterdir()) == ["opt_000002.npz", "train_config.json"]
    status = read_status(run.path)
    assert status["state"] == "done" and status["images_done"] == status["images_total"] == 2 * 48
    with pytest.raises(RunError, match="already exists"):
        train(CFG, run.path)


def test_resume_after_torn_mini_epoch_restores_optimizer(tmp_path):
    saved: dict[str, bytes] = {}

    def keep_opt_1(me: int, row: dict) -> None:
        if me == 1:
            saved["opt"] = (tmp_path / "r" / "resume" / "opt_000001.npz").read_bytes()

    run = train(CFG, tmp_path / "r", on_checkpoint=keep_opt_1)
    # Recreate what a kill between checkpoint 2 and its history row leaves: checkpoint 2 and
    # optimizer state 1 and 2 on disk, no row 2, and a temp file of an interrupted write.
    hist = run.history()
    RunWriter(run.path).write_history(hist[hist["mini_epoch"] < 2])
    (run.path / "resume" / "opt_000001.npz").write_bytes(saved["opt"])
    (run.path / "checkpoints" / ".ckpt_000003.npz.x1.tmp").write_bytes(b"half")
    first = hist.iloc[0].to_dict()

    run = train(dataclasses.replace(CFG, mini_epochs=4), run.path, resume=True)
    _check_consistent(run, 4, STEPS * CFG.batch_size)
    again = run.history().iloc[0].to_dict()
    assert again == pytest.approx(first, nan_ok=True)  # row 1 untouched
    # Restored from mini-epoch 1 and trained 3 more: a fresh optimizer would count 3 * STEPS.
    assert _iterations(run, 4) == 4 * STEPS
    assert not list((run.path / "checkpoints").glob(".*"))
    assert run.manifest.training == {**CFG.to_dict(), "mini_epochs": 4}  # the plan follows the resume

    # Resuming a finished run changes nothing.
    before = (run.path / HISTORY).read_bytes()
    train(dataclasses.replace(CFG, mini_epochs=4), run.path, resume=True)
    assert (run.path / HISTORY).read_bytes() == before


def test_resume_of_a_folder_without_a_run_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "precious.txt").write_text("keep")
    with pytest.raises(RunError, match="nothing to resume"):
        train(CFG, tmp_path / "x", resume=True)
    assert (tmp_path / "x" / "precious.txt").exists()


class _SignalAt(keras.callbacks.Callback):
    """Sends SIGTERM to this process after a given global batch."""

    def __init__(self, at_batch: int):
        super().__init__()
        self.at, self.seen = at_batch, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_stops_after_the_current_batch(tmp_path):
    old = signal.getsignal(signal.SIGTERM)
    cfg = dataclasses.replace(CFG, mini_epochs=3)
    run = train(cfg, tmp_path / "r", handle_signals=True, callbacks=[_SignalAt(STEPS + 1)])
    assert signal.getsignal(signal.SIGTERM) is old  # handler restored
    assert read_status(run.path)["state"] == "cancelled"
    _check_consistent(run, 1, STEPS * CFG.batch_size)  # mini-epoch 2 was cut short and not written
    run = train(cfg, run.path, resume=True)
    _check_consistent(run, 3, STEPS * CFG.batch_size)
    assert _iterations(run, 3) == 3 * STEPS


class _CancelDuring(keras.callbacks.Callback):
    """Sends SIGTERM while global batch ``at`` runs (as a Cancel click does) and records, at that batch's
    end, the images the trainer has seen and the status the page would read then."""

    def __init__(self, at_batch: int, run_dir):
        super().__init__()
        self.at, self.seen, self.run_dir, self.status_then = at_batch, 0, run_dir, None

    def on_train_batch_begin(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.at:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_train_batch_end(self, batch, logs=None):
        if self.seen == self.at:
            self.status_then = read_status(self.run_dir)


def test_cancel_ends_within_the_current_batch_and_says_so_at_once(tmp_path):
    # Cancel during batch 2 of mini-epoch 2 of 20: the run ends after that batch (images seen, not
    # seconds), and the status file says "stopping" with that count before the run ends, so the
    # Train page never shows an older mini-epoch than the one training really stops in.
    cfg = dataclasses.replace(CFG, mini_epochs=20)
    at = STEPS + 2
    probe = _CancelDuring(at, tmp_path / "r")
    run = train(cfg, tmp_path / "r", handle_signals=True, callbacks=[probe])
    assert probe.status_then["state"] == "stopping"
    assert probe.status_then["images_done"] == at * CFG.batch_size
    final = read_status(run.path)
    assert final["state"] == "cancelled"
    assert final["images_done"] == at * CFG.batch_size  # not one batch more
    assert [c.mini_epoch for c in run.checkpoints()] == [0, 1]  # no checkpoint after the cancel


def test_cli_train_and_resume(tmp_path, capsys):
    from core.__main__ import main

    common = ["--runs-root", str(tmp_path), "--input-size", "32", "--widths", "8,8,8,8,8", "--convs", "1,1,1,1,1",
              "--num-classes", "5", "--train-images", "96", "--val-images", "10", "--probe-images", "4",
              "--batch-size", "16", "--mini-epoch-images", "32", "--optimizer", "sgd", "--lr-schedule", "cosine",
              "--lr", "0.05"]
    assert main(["train", "cli-run", *common, "--mini-epochs", "2"]) == 0
    assert main(["train", "cli-run", *common, "--mini-epochs", "2"]) == 2  # exists: refused, no traceback
    assert "already exists" in capsys.readouterr().err
    assert main(["train", "cli-run", *common, "--mini-epochs", "3", "--resume"]) == 0
    run = Run(tmp_path / "cli-run")
    _check_consistent(run, 3, 32)
    lr = run.history()["lr"].to_numpy()
    # Cosine decay over the planned 2 x 2 steps: half-way after mini-epoch 1, zero at the end.
    assert math.isclose(lr[0], 0.025, rel_tol=1e-4) and lr[1] < 1e-6
    assert run.manifest.training["optimizer"] == "sgd"
