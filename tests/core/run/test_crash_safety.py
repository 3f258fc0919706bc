"""Crash safety: SIGKILL the training process at seeded moments; the run stays readable and resumes exactly."""
from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from core.training import jobs
from core.training.models import ArchConfig
from core.run.runs import Run

# Wide dense layers make checkpoints ~2 MB, so a write lasts long enough to be caught mid-way.
ARCH = ArchConfig(input_size=32, widths=(8, 8, 8), convs=(1, 1, 1), residual_blocks=(2,), se_blocks=(1, 2, 3),
                  dense_units=(512, 512), num_classes=5, stem_width=8)
N = 6


def _cfg():
    from core.training.trainer import TrainConfig

    return TrainConfig(arch=ARCH, train_images=192, val_images=16, probe_images=4, batch_size=32,
                       mini_epoch_images=64, mini_epochs=N, learning_rate=1e-3, seed=3)


def _kill_when(pid: int, ready, timeout: float = 90.0, poll: float = 0.0005) -> bool:
    """SIGKILL ``pid`` as soon as ``ready()``; False if the process ended or time ran out first."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if ready():
            os.kill(pid, signal.SIGKILL)
            return True
        if not jobs.pid_alive(pid):
            return False
        time.sleep(poll)
    os.kill(pid, signal.SIGKILL)
    return False


def _temp_in(*dirs: Path):
    def ready() -> bool:
        for d in dirs:
            try:
                # Skip checkpoint 0 (written at start-up): aim at a mini-epoch's write.
                if any(n.startswith(".") and ".tmp" in n and "_000000." not in n for n in os.listdir(d)):
                    return True
            except FileNotFoundError:
                pass
        return False
    return ready


def _after(seconds: float):
    t = time.monotonic() + seconds
    return lambda: time.monotonic() >= t


def _training_for(run_dir: Path, pid: int, seconds: float):
    """True once process ``pid`` has been in fit for ``seconds`` (its status says running)."""
    since: list[float] = []

    def ready() -> bool:
        if not since:
            from core.training.trainer import read_status

            s = read_status(run_dir) or {}
            if s.get("pid") == pid and s.get("state") == "running":
                since.append(time.monotonic())
            return False
        return time.monotonic() - since[0] >= seconds
    return ready


def _assert_readable(run_dir: Path) -> list[int]:
    """Whatever the moment of the kill, what a reader lists it can read."""
    if not (run_dir / "manifest.json").exists():
        return []
    run = Run(run_dir)
    for c in run.checkpoints():
        w = run.read_weights(c)
        assert w and all(np.isfinite(a).all() for a in w.values() if a.dtype.kind == "f")
    hist = run.history()
    assert hist["mini_epoch"].is_unique
    return run.complete_mini_epochs()


def _wait_dead(pid: int, timeout: float = 10.0) -> None:
    t_end = time.monotonic() + timeout
    while jobs.pid_alive(pid) and time.monotonic() < t_end:
        time.sleep(0.05)
    assert not jobs.pid_alive(pid)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path):
    rnd = random.Random(7)
    root, run_dir = tmp_path, tmp_path / "crashy"
    ckpts, resume_dir = run_dir / "checkpoints", run_dir / "resume"
    kills = [  # each is (what, a factory of the moment to kill the process just started)
        ("during start-up", lambda pid: _after(rnd.uniform(0.5, 4.0))),
        ("during a checkpoint write", lambda pid: _temp_in(ckpts, resume_dir)),
        ("at a random moment of training", lambda pid: _training_for(run_dir, pid, rnd.uniform(0.1, 1.5))),
    ]
    st = jobs.start(root, "crashy", _cfg())
    caught_write = False
    for i, (what, make_ready) in enumerate(kills):
        if i > 0:
            st = jobs.resume(run_dir)
        killed = _kill_when(st.pid, make_ready(st.pid))
        _wait_dead(st.pid)
        assert jobs.lock_holder(root) is None  # the kernel dropped the dead process's lock
        if what == "during a checkpoint write" and killed:
            caught_write = True
        done = _assert_readable(run_dir)
        state = jobs.status(run_dir)
        assert state.state in ("died", "done"), (what, state)
        print(f"kill {i} ({what}): killed={killed}, complete mini-epochs {done}, "
              f"temp files left {[p.name for p in run_dir.rglob('.*tmp*')]}")
    assert caught_write

    st = jobs.resume(run_dir)
    final = jobs.wait(run_dir, timeout=180)
    assert final.state == "done", jobs.log_tail(run_dir)
    run = Run(run_dir)
    assert [c.mini_epoch for c in run.checkpoints()] == list(range(N + 1))
    hist = run.history()
    assert hist["mini_epoch"].tolist() == list(range(1, N + 1))
    assert hist["images_seen"].tolist() == [64 * k for k in range(1, N + 1)]
    assert (np.diff(hist["images_seen"]) > 0).all() and np.isfinite(hist["loss"]).all()
    assert not run.problems and not list(run_dir.rglob(".*tmp*"))
    for c in run.checkpoints():
        run.read_weights(c)
