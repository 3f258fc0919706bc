"""Demo benchmark: how long `python -m core demo` takes, where the time goes, and whether the demo still shows its point.

    python bench/bench_demo.py [--keep DIR] [--skip-cli] [--skip-phases] [--sequential]

1. ``cli``: ``python -m core demo --force`` in a fresh process into a temporary runs root, timed from
   the outside (TensorFlow start-up included: what a user waits); CPU seconds of the process and
   its child (the two runs train side by side, one per process).
   ``--sequential`` also times the fallback: both runs one after the other in one process.
2. ``phases``: the same trainings in this process, one after the other, each with the threads a
   side-by-side worker gets, split into phases with wall and CPU seconds (CPU = user + system of
   every thread of this process): start-up (import TensorFlow, Keras and the trainer), data
   (synthetic set), build (network), first step (tracing the training step), train steps,
   recorder (its hooks: run creation, validation, checkpoint snapshots), other (the rest of
   ``fit``: progress, input pipeline waits). CPU seconds are the steadier figure on a shared machine.
3. ``checks``: what the demo must keep showing: the troubled run's largest fall of an activation's
   std (layers still alive) against its own history (target >= 10x) and its layers with many
   dead channels, and the healthy run's problem findings (target: none).

The load average before and after is printed: on a busy machine compare ratios within one run.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Phases:
    """Seconds per phase: name -> [wall, cpu]."""

    spent: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, wall: float, cpu: float) -> None:
        w, c = self.spent.setdefault(name, [0.0, 0.0])
        self.spent[name] = [w + wall, c + cpu]

    def timed(self, name: str, fn):
        def wrapper(*a, **k):
            t, c = time.perf_counter(), cpu_s()
            try:
                return fn(*a, **k)
            finally:
                self.add(name, time.perf_counter() - t, cpu_s() - c)
        return wrapper


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def time_cli(root: Path, side_by_side: bool = True) -> tuple[float, float]:
    """(wall, CPU) seconds of the demo in a fresh process; CPU counts its child process too."""
    cmd = [sys.executable, "-m", "core", "demo", "--force", "--runs-root", str(root)]
    if not side_by_side:
        code = ("import sys; from core.training.demo import ensure_demo_runs; "
                "ensure_demo_runs(sys.argv[1], force=True, side_by_side=False)")
        cmd = [sys.executable, "-c", code, str(root)]
    t, c = time.perf_counter(), children_cpu_s()
    subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t, children_cpu_s() - c


def time_phases(root: Path) -> tuple[Phases, dict[str, float]]:
    """Train the demo runs in this process with every phase timed (see the module docstring)."""
    ph = Phases()
    t0, c0 = time.perf_counter(), cpu_s()
    import keras  # noqa: F401 - start-up is part of what a user waits
    from core.training import demo, models, trainer
    from core.training.recorder import RunRecorder
    ph.add("start-up", time.perf_counter() - t0, cpu_s() - c0)
    demo._limit_threads(max(1, (os.cpu_count() or 1) // len(demo.DEMOS)))

    trainer.load_data = ph.timed("data", trainer.load_data)
    models.build_seed_net = ph.timed("build", models.build_seed_net)
    for hook in ("on_train_begin", "on_train_batch_end", "on_train_end"):
        setattr(RunRecorder, hook, ph.timed("recorder", getattr(RunRecorder, hook)))

    class StepTimer(keras.callbacks.Callback):
        """Times each step from its batch-begin hook to the next hook after it (the recorder's batch end)."""

        def on_train_begin(self, logs=None):
            self.first = True

        def on_train_batch_begin(self, batch, logs=None):
            self.t, self.c = time.perf_counter(), cpu_s()

    timer = StepTimer()
    end_of_step = RunRecorder.on_train_batch_end

    def step_then_record(self, batch, logs=None):
        ph.add("first step" if timer.first else "train steps", time.perf_counter() - timer.t, cpu_s() - timer.c)
        timer.first = False
        return end_of_step(self, batch, logs)

    RunRecorder.on_train_batch_end = step_then_record
    fit_total = {}
    images = 0
    for name, cfg in demo.DEMOS.items():
        t, c = time.perf_counter(), cpu_s()
        trainer.train(cfg, root / name, callbacks=[timer])
        fit_total[name] = time.perf_counter() - t
        ph.add("run total", fit_total[name], cpu_s() - c)
        images += cfg.mini_epochs * cfg.steps_per_mini_epoch * cfg.batch_size
    return ph, {"images": images, **fit_total}


def print_phases(ph: Phases, info: dict[str, float]) -> None:
    total_w, total_c = ph.spent.pop("run total")
    start_w, start_c = ph.spent["start-up"]
    named = ("data", "build", "first step", "train steps", "recorder")
    other_w = total_w - sum(ph.spent.get(n, [0, 0])[0] for n in named)
    other_c = total_c - sum(ph.spent.get(n, [0, 0])[1] for n in named)
    ph.spent["other"] = [other_w, other_c]
    all_w, all_c = start_w + total_w, start_c + total_c
    print(f"\n== phases, in this process ({int(info['images'])} training images in all)")
    print(f"  {'phase':<12} {'wall s':>8} {'share':>6} {'CPU s':>8}")
    for n in ("start-up", *named, "other"):
        w, c = ph.spent.get(n, [0.0, 0.0])
        print(f"  {n:<12} {w:8.1f} {w / all_w:6.1%} {c:8.1f}")
    print(f"  {'total':<12} {all_w:8.1f} {1:6.0%} {all_c:8.1f}")
    w, c = ph.spent["train steps"]
    print(f"  training rate: {info['images'] / w:.0f} img/s wall, {c / info['images'] * 1e3:.2f} ms CPU per image")


def demo_checks(root: Path) -> None:
    """The troubled run's std fall and dead channels; the healthy run's problem findings."""
    from core.analysis.diagnose import diagnose, thresholds_for
    from core.analysis.sweep import sweep
    from core.run.runs import Run

    for name in ("demo-troubled", "demo-healthy"):
        run = Run(root / name)
        t = time.perf_counter()
        result = sweep(run)
        dt = time.perf_counter() - t
        per = result.layers.groupby(["layer", "mini_epoch"])
        std = per["std"].mean().unstack("mini_epoch")
        std = std[(std.iloc[:, -1] > 0) & std.index.str.contains("_act|_add")]  # activations still alive
        fall = (std.cummax(axis=1) / std).max(axis=1)
        worst = fall.idxmax()
        dead = per["frac_dead_channels"].mean().unstack("mini_epoch").iloc[:, -1]
        findings = diagnose(result, run.history(), run.manifest, thresholds_for(run))
        kinds = sorted({f.kind for f in findings if f.severity == "problem"})
        acc = run.history()["val_accuracy"].iloc[-1]
        print(f"\n== {name}: sweep {dt:.1f} s; last val accuracy {acc:.2f}; largest std fall "
              f"{fall[worst]:.0f}x ({worst}); layers with >= 25 % dead channels at the end: "
              f"{int((dead >= 0.25).sum())}; problem findings: {', '.join(kinds) or 'none'}")


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, help="write the runs here (kept) instead of a temporary folder")
    ap.add_argument("--skip-cli", action="store_true", help="skip the end-to-end `python -m core demo` timing")
    ap.add_argument("--skip-phases", action="store_true", help="skip the in-process phase split")
    ap.add_argument("--sequential", action="store_true",
                    help="also time both runs one after the other in one process (the demo's fallback)")
    args = ap.parse_args()
    print(f"load average (1, 5, 15 min) before: {load()} on {os.cpu_count()} CPUs")
    root = args.keep or Path(tempfile.mkdtemp(prefix="ade-bench-demo-"))
    try:
        if not args.skip_cli:
            wall, cpu = time_cli(root / "cli")
            print(f"\n== python -m core demo --force (fresh process): {wall:.1f} s wall, {cpu:.1f} s CPU")
        if args.sequential:
            wall1, cpu1 = time_cli(root / "sequential", side_by_side=False)
            print(f"\n== the same, one run after the other in one process: {wall1:.1f} s wall, {cpu1:.1f} s CPU"
                  + (f"; side by side takes {wall / wall1:.2f}x the time" if not args.skip_cli else ""))
        if not args.skip_phases:
            print_phases(*time_phases(root / "phases"))
        demo_checks(root / ("phases" if args.skip_cli else "cli"))
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nload average after: {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
