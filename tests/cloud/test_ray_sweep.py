"""Sweeps on a local Ray cluster of 2 workers: the one-process tables, bit for bit, even when a worker dies."""
from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.cloud.conftest import needs

needs("ray")


@pytest.fixture(scope="module")
def run12(tmp_path_factory):
    """A 12-checkpoint tiny run (mini-epochs 0-12) and its one-process sweep, computed without any cache."""
    from core.analysis.sweep import sweep
    from core.engine.engine import run_probe_set
    from tests.fixtures import make_tiny_run

    run = make_tiny_run(tmp_path_factory.mktemp("ray"), "run12", mini_epochs=12)
    expected = sweep(run, run_probe_set(run), use_cache=False)
    shutil.rmtree(run.cache_dir)
    return run, {k: expected.tables[k] for k in expected.tables}


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with 2 worker CPUs, started and stopped here.

    Ray starts its workers at nice 15: on a machine busy with other work they would get almost no
    CPU and these tests would take minutes. Niceness 0 gives them a fair share.
    """
    import ray

    from core.analysis.raysweep import runtime_env

    before = os.environ.get("RAY_worker_niceness")
    os.environ["RAY_worker_niceness"] = "0"
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env=runtime_env(None))
        yield ray
        ray.shutdown()
    finally:
        if before is None:
            os.environ.pop("RAY_worker_niceness", None)
        else:
            os.environ["RAY_worker_niceness"] = before


def _copy(run, folder: Path):
    from core.run.runs import Run

    dst = folder / run.name
    shutil.copytree(run.path, dst, ignore=shutil.ignore_patterns("cache"))
    return Run(dst)


def _assert_equal(expected, result) -> None:
    import pandas as pd

    assert sorted(result.tables) == sorted(expected)
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(frame, result.tables[name], check_exact=True, obj=name)


def test_ray_sweep_equals_one_process(run12, cluster, tmp_path):
    from core.analysis.raysweep import sweep_on_ray
    from core.engine.engine import run_probe_set

    src, expected = run12
    run = _copy(src, tmp_path)
    result = sweep_on_ray(run, str(run.path), run_probe_set(run), workers=2)
    _assert_equal(expected, result)
    assert not result.problems


def _sweep_task_pids() -> list[int]:
    """Ray worker processes executing a sweep task (Ray names them ``ray::sweep_task``)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "cmdline").read_bytes().startswith(b"ray::sweep_task"):
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def test_a_worker_killed_mid_sweep_is_retried_without_losing_or_duplicating_rows(run12, cluster, tmp_path):
    from core.analysis.raysweep import sweep_on_ray
    from core.engine.engine import run_probe_set

    src, expected = run12
    run = _copy(src, tmp_path)
    out: dict = {}

    def drive() -> None:
        try:
            out["result"] = sweep_on_ray(run, str(run.path), run_probe_set(run), workers=2)
        except BaseException as e:  # handed to the test thread
            out["error"] = e

    t = threading.Thread(target=drive)
    t.start()
    killed = None
    deadline = time.monotonic() + 600  # bound for a busy machine; the condition normally holds in seconds
    while killed is None and t.is_alive() and time.monotonic() < deadline:
        pids = _sweep_task_pids()
        stamps = list(run.cache_dir.glob("sweep-*/me_*.json")) if run.cache_dir.is_dir() else []
        if pids and stamps:  # a task is running and some checkpoints are done: kill that worker
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    t.join()
    assert killed is not None, "no sweep task was seen running"
    assert "error" not in out, out.get("error")
    _assert_equal(expected, out["result"])


def test_cli_ray_flag_fills_the_cache_the_app_reads(run12, cluster, tmp_path, capsys):
    from core.__main__ import main
    from core.analysis.sweep import sweep
    from core.engine.engine import run_probe_set

    src, expected = run12
    run = _copy(src, tmp_path)
    assert main(["sweep", str(run.path), "--ray", "--ray-workers", "2"]) == 0
    assert "13 checkpoints" in capsys.readouterr().out
    cached = sweep(run, run_probe_set(run))  # what every page reads afterwards: all from the cache
    _assert_equal(expected, cached)
