"""The two built-in demo runs: one healthy, one whose middle-layer activations collapse.

With two or more CPU cores the runs train side by side: one in this process, the other in a
child process, each with its share of the cores. A small network's training step leaves a second
core mostly idle (many small operations run one after another), so two runs at once take little
longer than one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from core.run.runs import MANIFEST, Run
from core.training.models import ArchConfig
from core.training.trainer import TrainConfig, read_status, train

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

BarFactory = Callable[[int, str], Any]
LOG = "train.log"  # a child's output, kept in its run folder (a side file the trainer accepts)


def ensure_demo_runs(root: str | Path, force: bool = False, bar_factory: BarFactory | None = None, *,
                     demos: Mapping[str, TrainConfig] = DEMOS, side_by_side: bool | None = None) -> list[str]:
    """Train the demo runs that are missing (or all with ``force``); returns the names created.

    ``side_by_side`` (default: with two or more cores) trains them at the same time, one per
    process; otherwise one after the other in this process.
    """
    root = Path(root)
    todo = {name: cfg for name, cfg in demos.items()
            if force or not (root / name).exists() or not _complete(root / name, cfg)}
    for name in todo:
        if (root / name).exists():
            shutil.rmtree(root / name)
    cores = os.cpu_count() or 1
    if side_by_side is None:
        side_by_side = cores > 1
    if side_by_side and len(todo) > 1:
        _train_side_by_side(root, todo, bar_factory, threads=max(1, cores // len(todo)))
    else:
        for name, cfg in todo.items():
            bars = _Bars(bar_factory, {name: cfg})
            try:
                train(cfg, root / name, progress=lambda s, name=name: bars.update(name, s["images_done"]))
            finally:
                bars.close()
    return list(todo)


class _Bars:
    """One progress bar per run (or none without a factory)."""

    def __init__(self, factory: BarFactory | None, cfgs: Mapping[str, TrainConfig]):
        self.bars = {name: factory(_images(cfg), name) for name, cfg in cfgs.items()} if factory else {}

    def update(self, name: str, images_done: int) -> None:
        bar = self.bars.get(name)
        if bar is not None and images_done != bar.n:
            bar.n = images_done
            bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _images(cfg: TrainConfig) -> int:
    return cfg.mini_epochs * cfg.steps_per_mini_epoch * cfg.batch_size


def _train_side_by_side(root: Path, todo: Mapping[str, TrainConfig], bar_factory: BarFactory | None,
                        threads: int) -> None:
    """The first run trains here, every other one in a child process; all at once."""
    (here, cfg_here), *others = todo.items()
    bars = _Bars(bar_factory, todo)
    children: dict[str, subprocess.Popen] = {}
    try:
        for name, cfg in others:
            children[name] = _start_child(root / name, cfg, threads)
        _limit_threads(threads)

        def progress(s: dict[str, Any]) -> None:
            bars.update(here, s["images_done"])
            _follow(root, children, bars)

        train(cfg_here, root / here, progress=progress)
        for child in children.values():
            while True:
                try:
                    child.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    _follow(root, children, bars)
        _follow(root, children, bars)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.terminate()  # the trainer stops after its current batch
                child.wait()
        bars.close()


def _start_child(run_dir: Path, cfg: TrainConfig, threads: int) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    with open(run_dir / LOG, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "core.training.demo", str(run_dir), str(threads),
                                 json.dumps(cfg.to_dict())], stdout=log, stderr=subprocess.STDOUT, env=env)


def _follow(root: Path, children: Mapping[str, subprocess.Popen], bars: _Bars) -> None:
    """Move the children's bars; a child that failed stops the demo (its output says why)."""
    for name, child in children.items():
        status = read_status(root / name)
        if status is not None:
            bars.update(name, int(status.get("images_done", 0)))
        if child.poll() not in (None, 0):
            raise RuntimeError(f"training the demo run {name} failed (exit code {child.returncode}); "
                               f"its output is in {root / name / LOG}:\n{_tail(root / name / LOG)}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def _limit_threads(threads: int) -> None:
    """Give TensorFlow ``threads`` threads; a no-op once its runtime has started in this process."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # already initialised (e.g. a caller ran TensorFlow before): keep its pools
        pass


def _complete(d: Path, cfg: TrainConfig) -> bool:
    if not (d / MANIFEST).exists():
        return False
    try:
        return Run(d).complete_mini_epochs()[-1:] == [cfg.mini_epochs]
    except Exception:
        return False


def _child_main(argv: list[str]) -> int:
    """``python -m core.training.demo RUN_DIR THREADS CONFIG_JSON``: train one demo run (a child of the above)."""
    run_dir, threads, cfg = Path(argv[0]), int(argv[1]), TrainConfig.from_dict(json.loads(argv[2]))
    _limit_threads(threads)
    train(cfg, run_dir, handle_signals=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
