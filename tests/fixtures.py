"""Tiny seeded runs shared by the tests (real Keras models and checkpoints, a few seconds each).

A trained fixture run is kept in a cache folder keyed by its content: the training config, the
source of the code that trains and writes runs (core/training, core/run) and the library
versions. A later session (or a second test asking for the same run) copies it instead of
training again; any change to that code trains afresh. ``ADE_TEST_RUN_CACHE`` sets the folder
(default ``~/.cache/ade/test-runs``); ``off`` trains every time.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.training.models import ArchConfig
from core.run.runs import Run, RunWriter, read_npz_weights
from core.training.trainer import TrainConfig, train

TINY_ARCH = ArchConfig(input_size=24, num_classes=5, stem_width=8, widths=(8, 12, 16), convs=(1, 2, 1),
                       residual_blocks=(2,), se_blocks=(1, 2, 3), se_ratio=4, dense_units=(16, 12))
TINY_TRAIN = TrainConfig(arch=TINY_ARCH, train_images=256, val_images=32, probe_images=8, batch_size=32,
                         mini_epoch_images=128, mini_epochs=3, learning_rate=3e-3, seed=0)


REPO = Path(__file__).resolve().parents[1]


def make_tiny_run(root: Path, name: str, *, arch: dict | None = None, **train_kw) -> Run:
    """The tiny network trained for a few mini-epochs, in ``root/name`` (from the cache when it has it)."""
    cfg = dataclasses.replace(TINY_TRAIN, arch=dataclasses.replace(TINY_ARCH, **(arch or {})), **train_kw)
    dst = Path(root) / name
    cache = os.environ.get("ADE_TEST_RUN_CACHE", str(Path.home() / ".cache" / "ade" / "test-runs"))
    if cache == "off":
        return train(cfg, dst)
    shutil.copytree(_trained(Path(cache), name, cfg), dst, ignore=shutil.ignore_patterns("cache"))
    return Run(dst)


def _trained(cache: Path, name: str, cfg: TrainConfig) -> Path:
    """``cache/<key>/<name>``: trained once for this content; concurrent sessions race harmlessly."""
    entry = cache / _content_key(name, cfg)
    if not (entry / name / "history.csv").exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
        try:
            train(cfg, tmp / name)
            try:
                os.rename(tmp, entry)  # atomic: readers see a whole entry or none
            except OSError:  # another session stored it first (or a torn entry is in the way)
                if not (entry / name / "history.csv").exists():
                    shutil.rmtree(entry, ignore_errors=True)
                    os.rename(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return entry / name


def _content_key(name: str, cfg: TrainConfig) -> str:
    h = hashlib.sha256(json.dumps([name, cfg.to_dict(), _versions()], sort_keys=True).encode())
    h.update(_producer_digest().encode())
    return h.hexdigest()[:24]


@lru_cache(maxsize=1)
def _producer_digest() -> str:
    h = hashlib.sha256()
    for p in sorted([*(REPO / "core" / "training").glob("*.py"), *(REPO / "core" / "run").glob("*.py")]):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def _versions() -> list[str]:
    import keras
    import tensorflow as tf

    return [np.__version__, tf.__version__, keras.__version__]


def inject_nan(run: Run, from_mini_epoch: int, variable: str | None = None) -> str:
    """Put NaN into one kernel of every checkpoint from ``from_mini_epoch`` on; returns the variable."""
    w = RunWriter(run.path)
    for c in run.checkpoints():
        if c.mini_epoch < from_mini_epoch:
            continue
        arrays = read_npz_weights(c.path)
        variable = variable or next(k for k in arrays if k.endswith("conv1/kernel"))
        arrays[variable] = np.full_like(arrays[variable], np.nan)
        w.write_checkpoint(c.mini_epoch, arrays)
    return variable


# -- planted pathologies (tests/core/analysis/test_diagnose.py) ---------------------------------------------------
def copy_run(src: Path, dst: Path) -> Run:
    """Copy a run directory without its derived cache."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("cache"))
    return Run(dst)


def rewrite_checkpoints(run: Run, from_mini_epoch: int, edit) -> None:
    """Call ``edit(mini_epoch, arrays)`` (mutating ``arrays``) on every checkpoint from ``from_mini_epoch`` on."""
    w = RunWriter(run.path)
    for c in run.checkpoints():
        if c.mini_epoch < from_mini_epoch:
            continue
        arrays = read_npz_weights(c.path)
        edit(c.mini_epoch, arrays)
        w.write_checkpoint(c.mini_epoch, arrays)


def plant_dead_channels(run: Run, from_mini_epoch: int, conv: str, channels, bn: str | None = None) -> None:
    """Kill output ``channels`` of ``conv`` from a mini-epoch on: kernel slice 0 and a very negative
    bias (no-BN) or BatchNorm beta (``bn``), so the following ReLU outputs exactly 0."""
    ch = np.asarray(channels)

    def edit(me: int, a: dict) -> None:
        a[f"{conv}/kernel"][..., ch] = 0.0
        if f"{conv}/bias" in a:
            a[f"{conv}/bias"][ch] = -100.0
        if bn is not None:
            a[f"{bn}/beta"][ch] = -100.0

    rewrite_checkpoints(run, from_mini_epoch, edit)


def plant_shrink(run: Run, from_mini_epoch: int, layer: str, factor: float = 0.05) -> None:
    """Multiply ``layer``'s kernel and bias by ``factor ** (t - k + 1)`` at mini-epoch t >= k (progressive)."""

    def edit(me: int, a: dict) -> None:
        s = factor ** (me - from_mini_epoch + 1)
        for v in ("kernel", "bias"):
            if f"{layer}/{v}" in a:
                a[f"{layer}/{v}"] = (a[f"{layer}/{v}"] * s).astype(a[f"{layer}/{v}"].dtype)

    rewrite_checkpoints(run, from_mini_epoch, edit)


def plant_se_gates(run: Run, from_mini_epoch: int, block: str, state: str) -> None:
    """Force SE block ``block`` (prefix, e.g. 'block1') to gates 'off' (~0), 'open' (~1) or 'half' (exactly 0.5:
    the dead squeeze path) by zeroing its ``*_se_expand`` kernel and setting the bias to -20 / +20 / 0."""
    bias = {"off": -20.0, "open": 20.0, "half": 0.0}[state]

    def edit(me: int, a: dict) -> None:
        a[f"{block}_se_expand/kernel"][...] = 0.0
        a[f"{block}_se_expand/bias"][...] = bias

    rewrite_checkpoints(run, from_mini_epoch, edit)


def corrupt_bn_stats(run: Run, from_mini_epoch: int, bn: str, mean_add: float = 50.0, var_mul: float = 100.0) -> None:
    """Corrupt BatchNorm ``bn``'s moving statistics from a mini-epoch on (moving_mean += 50, variance *= 100)."""

    def edit(me: int, a: dict) -> None:
        a[f"{bn}/moving_mean"] = a[f"{bn}/moving_mean"] + np.float32(mean_add)
        a[f"{bn}/moving_variance"] = a[f"{bn}/moving_variance"] * np.float32(var_mul)

    rewrite_checkpoints(run, from_mini_epoch, edit)
