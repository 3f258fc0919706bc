"""Resuming a run of the built-in trainer: where it continues, and the checks that keep it from losing data.

Resume never deletes or rewrites what it cannot read: a damaged manifest or history, or
checkpoints it cannot account for, stop it with a RunError naming the file and the
``python -m core repair`` command (nothing is changed).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.run.atomic import atomic_write_json
from core.run.runs import MANIFEST, RESUME_DIR, Run, RunError, repair_hint

if TYPE_CHECKING:
    from core.training.trainer import TrainConfig

STATUS = "train_status.json"
TRAIN_CONFIG = "train_config.json"  # in RESUME_DIR: the options, kept for ``repair``

# Files a job launcher may put in a run folder before the trainer starts (see core.training.jobs).
SIDE_FILES = frozenset({STATUS, "train.log", "job.json"})
_RUN_FILES = ("manifest.json", "model.keras", "probes.npz", "history.csv", "checkpoints", RESUME_DIR)


def _has_run_files(run_dir: Path) -> bool:
    """True when ``run_dir`` holds anything besides job side files (a run, or a torn start of one)."""
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return False
    return any(n not in SIDE_FILES for n in names)


def _started_here(run_dir: Path) -> bool:
    """True when a trainer or a job launcher wrote here (the only folders resume may clear)."""
    if any((run_dir / n).exists() for n in SIDE_FILES):
        return True
    try:
        return bool(Run(run_dir).manifest.training)
    except RunError:
        return False


def _clear_run_files(run_dir: Path) -> None:
    """Remove what a killed first start left behind (no complete checkpoint), keeping job side files."""
    import shutil

    for n in _RUN_FILES:
        p = run_dir / n
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    _remove_temp_files(run_dir)


def _remove_temp_files(run_dir: Path) -> None:
    """Temp files of atomic writes interrupted by a kill; readers ignore them, resume tidies them."""
    for d in (run_dir, run_dir / "checkpoints", run_dir / RESUME_DIR):
        if d.is_dir():
            for p in d.glob(".*.tmp*"):
                p.unlink(missing_ok=True)


@dataclass(frozen=True)
class ResumePoint:
    """Where a run continues: the last complete mini-epoch and the history values at it."""

    mini_epoch: int
    images_seen: int
    wall_time: float


def resume_point(run: Run) -> ResumePoint | None:
    """The last complete checkpoint of ``run`` (one with a history row; 0 needs none), or None.

    A manifest or history that cannot be read raises RunError: resuming must not guess.
    """
    if not (run.path / MANIFEST).exists() and not _has_checkpoints(run.path):
        return None
    done = run.complete_mini_epochs()
    if not done:
        return None
    me = done[-1]
    if me == 0:
        return ResumePoint(0, 0, 0.0)
    hist = run.history()
    last = hist[hist["mini_epoch"] == me].iloc[0]
    return ResumePoint(me, int(last["images_seen"]), float(last["wall_time"]))


def _has_checkpoints(run_dir: Path) -> bool:
    try:
        return any(n.startswith("ckpt_") for n in os.listdir(run_dir / "checkpoints"))
    except OSError:
        return False


def _check_resumable(run_dir: Path) -> TrainConfig | None:
    """The run's own training config; RunError (nothing touched) when the run cannot be read safely.

    None when the manifest holds no training config (e.g. rebuilt by ``repair``): the caller's
    options are then used and checked against the checkpoint's shapes.
    """
    run = Run(run_dir)
    has_manifest = (run_dir / MANIFEST).exists()
    if not has_manifest and (_has_checkpoints(run_dir) or (run_dir / "history.csv").exists()):
        raise RunError(run_dir / MANIFEST, "is missing but the run has checkpoints or a history; nothing was "
                                           f"changed. {repair_hint(run_dir)}")
    if not has_manifest:
        return None
    training = run.manifest.training  # RunError when damaged
    run.history_strict()  # RunError when the header is damaged
    if not training:
        return None
    try:
        return _train_config().from_dict(training)
    except (ValueError, TypeError) as e:
        raise RunError(run_dir / MANIFEST, f"its training config cannot be used ({e}); nothing was changed. "
                                           f"{repair_hint(run_dir)}") from None


def _check_options_fit(cfg: TrainConfig, run: Run, mini_epoch: int) -> None:
    """Without a recorded training config, the given options must build the network of the checkpoints."""
    from core.training.models import build_seed_net
    from core.run.runs import read_npz_weights

    model = build_seed_net(cfg.arch, seed=cfg.seed)
    want = {v.path: tuple(v.shape) for v in model.weights}
    got = {k: tuple(v.shape) for k, v in read_npz_weights(run.checkpoint(mini_epoch).path).items()}
    if any(got.get(k) != s for k, s in want.items()):
        raise RunError(run.path / MANIFEST, "records no training options and the options given do not build the "
                                            f"network of checkpoint {mini_epoch}: resume with the options the run "
                                            "was trained with (nothing was changed)")


def _record_plan(run_dir: Path, cfg: TrainConfig) -> None:
    """Keep the manifest's training config in step with a resume that extends (or cuts) the run."""
    raw = Run(run_dir).manifest.raw
    training = raw.get("training") or cfg.to_dict()
    if raw.get("training") != {**training, "mini_epochs": cfg.mini_epochs}:
        atomic_write_json(run_dir / MANIFEST, {**raw, "training": {**training, "mini_epochs": cfg.mini_epochs}})


def _manifest_config(run_dir: Path, mini_epochs: int) -> TrainConfig | None:
    try:
        return dataclasses.replace(_train_config().from_dict(Run(run_dir).manifest.training), mini_epochs=mini_epochs)
    except (RunError, ValueError, TypeError):
        return None




def _train_config():
    from core.training.trainer import TrainConfig  # the trainer imports this module

    return TrainConfig
