"""Reading a run while ``python -m core train`` writes it, and after the trainer is SIGKILLed mid-write.

A reader must never see a partial checkpoint (every listed checkpoint reads completely), nor a
history row whose checkpoint is not there. Run with ``-s`` for the counts.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.conftest import REPO

# ~3 MB checkpoints (two 192-channel convs at 1x1 spatial: cheap to train) so a write can be caught.
TRAIN_ARGS = ["--input-size", "32", "--num-classes", "5", "--widths", "8,8,16,32,192", "--convs", "1,1,1,1,2",
              "--train-images", "192", "--val-images", "16", "--probe-images", "4", "--batch-size", "32",
              "--mini-epoch-images", "64", "--seed", "5"]


def _start(root: Path, name: str, mini_epochs: int) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    log = open(root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "core", "train", name, "--runs-root", str(root),
                             "--mini-epochs", str(mini_epochs), *TRAIN_ARGS],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


class Reader:
    """What a reader (the app) does, checked at every poll: list, read, cross-check with the history."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.verified: dict[int, tuple] = {}  # mini-epoch -> identity already read completely
        self.keys: dict[str, tuple] | None = None
        self.polls = self.reads = self.max_seen = self.rows_seen = 0
        self.failures: list[str] = []
        self.model_checked = False

    def poll(self) -> None:
        from core.run.runs import Run, RunError

        if not (self.run_dir / "manifest.json").exists():
            return
        self.polls += 1
        run = Run(self.run_dir)
        try:
            run.manifest
            if not self.model_checked:  # written before the manifest: complete when the manifest is there
                from core.run.loading import load_model_file

                load_model_file(run.architecture_path)
                x, y = run.probes()
                assert len(x) == 4 and len(y) == 4
                self.model_checked = True
            hist = run.history()  # rows first, then the listing: a row must find its checkpoint
            ckpts = run.checkpoints()
        except (RunError, AssertionError) as e:
            self.failures.append(f"poll {self.polls}: {type(e).__name__}: {e}")
            return
        listed = {c.mini_epoch for c in ckpts}
        rows = set(hist["mini_epoch"].tolist())
        self.rows_seen = max(self.rows_seen, len(rows))
        if rows - listed:
            self.failures.append(f"poll {self.polls}: history rows {sorted(rows - listed)} without checkpoint "
                                 f"(listed {sorted(listed)})")
        for p in run.problems:
            if "line" in p and "torn" in p:
                continue  # the reader tolerates a torn row (writes are atomic, so none is expected)
            self.failures.append(f"poll {self.polls}: problem {p}")
        for c in ckpts:
            if self.verified.get(c.mini_epoch) == c.identity:
                continue
            self.check_checkpoint(run, c)
        self.max_seen = max(self.max_seen, max(listed, default=-1))

    def check_checkpoint(self, run, c) -> None:
        from core.run.runs import RunError

        try:
            w = run.read_weights(c)
        except RunError as e:
            if "disappeared" in str(e):
                return  # replaced between listing and reading (resume truncation): list again next poll
            self.failures.append(f"mini-epoch {c.mini_epoch}: partial or unreadable: {e}")
            return
        self.reads += 1
        shapes = {k: v.shape for k, v in w.items()}
        if self.keys is None:
            self.keys = shapes
        elif shapes != self.keys:
            self.failures.append(f"mini-epoch {c.mini_epoch}: variables differ from mini-epoch 0's")
        if not all(np.isfinite(v).all() for v in w.values() if v.dtype.kind == "f"):
            self.failures.append(f"mini-epoch {c.mini_epoch}: non-finite weights")
        self.verified[c.mini_epoch] = c.identity

    def final_check(self) -> list[int]:
        """After the writer is gone: every listed checkpoint reads, every row has its checkpoint."""
        self.verified.clear()
        self.poll()
        from core.run.runs import Run

        return Run(self.run_dir).complete_mini_epochs() if (self.run_dir / "manifest.json").exists() else []


@pytest.mark.slow
def test_read_while_training_then_after_sigkill_mid_write(tmp_path):
    """Two trainers run at once (start-up dominates, so this costs about one): ``live`` is followed by
    a reader until it ends; ``killed`` is SIGKILLed during the write of a seeded random checkpoint."""
    root = tmp_path / "runs"
    root.mkdir()
    n = 8
    rnd = random.Random(int(os.environ.get("ADE_KILL_SEED", "11")))
    target = rnd.randint(1, n - 1)
    t0 = time.monotonic()
    live, victim = _start(root, "live", n), _start(root, "killed", n)
    reader = Reader(root / "live")
    ck = root / "killed" / "checkpoints"
    killed_how, last_poll = None, 0.0
    while (live.poll() is None or (victim.poll() is None and not killed_how)) and time.monotonic() - t0 < 240:
        now = time.monotonic()
        if live.poll() is None and now - last_poll > 0.02:
            reader.poll()
            last_poll = now
        if killed_how is None and victim.poll() is None:
            try:
                names = os.listdir(ck)
            except FileNotFoundError:
                names = []
            if any(x.startswith(f".ckpt_{target:06d}.npz.") and x.endswith(".tmp") for x in names):
                os.kill(victim.pid, signal.SIGKILL)
                killed_how = f"during the write of checkpoint {target} (its temp file was there)"
            elif f"ckpt_{target + 1:06d}.npz" in names or f"ckpt_{target:06d}.npz" in names and target == n - 1:
                os.kill(victim.pid, signal.SIGKILL)
                killed_how = f"just after checkpoint {target} was written (its write was too quick to catch)"
        # spin only while the victim is about to write the target (2 cores: a busy reader slows the writers)
        close = (ck / f"ckpt_{target - 1:06d}.npz").exists() and killed_how is None
        time.sleep(0.0002 if close else 0.01)
    duration = time.monotonic() - t0
    for p in (live, victim):
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)
    assert live.returncode == 0, (root / "live.log").read_text()[-3000:]
    reader.final_check()
    print(f"\n\nlive: {reader.polls} polls while training ({duration:.0f} s), {reader.reads} complete checkpoint "
          f"reads, newest mini-epoch seen {reader.max_seen}, {len(reader.failures)} failures")
    assert not reader.failures, "\n".join(reader.failures[:20])
    assert reader.max_seen == n and reader.rows_seen == n and reader.polls > 20

    assert killed_how, "the victim ended before it could be killed: " + (root / "killed.log").read_text()[-2000:]
    reader2 = Reader(root / "killed")
    done = reader2.final_check()
    temp = sorted(p.name for p in (root / "killed").rglob(".*tmp*"))
    listed = sorted(reader2.verified)
    print(f"killed: SIGKILL {killed_how}; afterwards {len(listed)} listed checkpoints {listed} all read "
          f"completely, complete (with history row) {done}, temp files left (ignored by readers) {temp}, "
          f"{len(reader2.failures)} failures")
    assert not reader2.failures, "\n".join(reader2.failures)
    assert listed and listed == list(range(len(listed)))  # a prefix, no hole
    assert done and done[-1] >= target - 1
