"""The two built-in demo runs: one healthy, one whose middle-layer activations collapse."""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any, Callable

from core.training.models import ArchConfig
from core.run.runs import MANIFEST, Run
from core.training.trainer import TrainConfig, train

_BASE = TrainConfig(arch=ArchConfig(), train_images=8000, val_images=400, probe_images=32,
                    batch_size=64, mini_epoch_images=2000, mini_epochs=8, seed=0)

DEMOS: dict[str, TrainConfig] = {
    # Adam 5e-4 with BatchNorm and SE: trains cleanly.
    "demo-healthy": dataclasses.replace(_BASE, optimizer="adam", learning_rate=5e-4),
    # No BatchNorm and a strong L2 penalty: the middle layers' activations shrink by
    # more than 10x within a few mini-epochs and many channels die (the design's
    # "shrinking activations").
    "demo-troubled": dataclasses.replace(
        _BASE, arch=dataclasses.replace(ArchConfig(), batchnorm=False, l2=1e-2),
        optimizer="adam", learning_rate=5e-4),
}


def ensure_demo_runs(root: str | Path, force: bool = False,
                     bar_factory: Callable[[int, str], Any] | None = None) -> list[str]:
    """Train the demo runs that are missing (or all with ``force``); returns the names created."""
    root = Path(root)
    made = []
    for name, cfg in DEMOS.items():
        d = root / name
        if d.exists() and not force and _complete(d, cfg):
            continue
        if d.exists():
            shutil.rmtree(d)
        bar = bar_factory(cfg.mini_epochs * cfg.steps_per_mini_epoch * cfg.batch_size, name) if bar_factory else None

        def progress(s: dict[str, Any], bar=bar) -> None:
            if bar is not None:
                bar.n = s["images_done"]
                bar.refresh()

        try:
            train(cfg, d, progress=progress)
        finally:
            if bar is not None:
                bar.close()
        made.append(name)
    return made


def _complete(d: Path, cfg: TrainConfig) -> bool:
    if not (d / MANIFEST).exists():
        return False
    try:
        return Run(d).complete_mini_epochs()[-1:] == [cfg.mini_epochs]
    except Exception:
        return False
