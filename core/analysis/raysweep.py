"""Sweeps spread over Ray workers (``python -m core sweep RUN --ray [ADDRESS]``) or batch-scheduler shards.

Each Ray task sweeps a contiguous range of checkpoints with the ordinary ``sweep`` (same traced
extraction) and returns its cache bundle (``core.analysis.shard``); the driver merges each
bundle as it arrives, then runs the one-process sweep, which reads every checkpoint back from
the cache: the tables are the one-process tables. A worker that dies is retried by Ray
(``max_retries``); its checkpoints are taken once, from whichever attempt finished.
Ray is optional (requirements-cloud.txt).
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from core.analysis.shard import (Bundle, Shard, chunks, default_pieces, export_bundle, merge_bundle, merge_folders,
                                 sweep_key, sweep_shard)
from core.analysis.sweep import SweepOptions, SweepResult, sweep
from core.engine.engine import ProbeSet, RunEngine
from core.errors import UserError
from core.run.runs import Run

RAY_HINT = ("--ray needs Ray, an optional extra: .venv/bin/python -m pip install -r requirements-cloud.txt "
            "(or pip install 'ray==2.60.0')")
#: Ray retries a task whose worker died this many times.
MAX_RETRIES = 3

Progress = Callable[[int, int, str], None]


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(RAY_HINT) from None
    return ray


def _task_run(run_ref: str, mine: Sequence[int]) -> Run:
    """The run as a worker sees it: a local path, or its own mirror of a URL (only the checkpoints it needs)."""
    from core.run.remote import is_url, mirror

    if not is_url(run_ref):
        return Run(run_ref)
    wanted = set(mine) | {min(mine) - 1}  # the one before this range: its update ratio
    return mirror(run_ref).sync(checkpoints=lambda me: me in wanted)


_ENGINES: dict[tuple, RunEngine] = {}


def _engine(run: Run) -> RunEngine:
    """The worker process's engine for ``run``: a worker's next task of the same run skips the build and trace."""
    key = (str(run.path), run.architecture_path.stat().st_mtime_ns)
    if key not in _ENGINES:
        _ENGINES.clear()  # one run at a time per worker: memory stays that of one model
        _ENGINES[key] = RunEngine(run)
    return _ENGINES[key]


def sweep_task(run_ref: str, mine: list[int], probes: ProbeSet, options: SweepOptions, driver_cache: str) -> Bundle:
    """One Ray task: sweep checkpoints ``mine``; the bundle carries files only when the caches differ."""
    run = _task_run(run_ref, mine)
    engine = _engine(run)
    sweep(run, probes, engine=engine, options=options, mini_epochs=mine)
    key = sweep_key(run, engine, probes, options)
    shared = str((run.cache_dir / key).resolve()) == driver_cache
    return export_bundle(run, key, mine, with_files=not shared)


def runtime_env(address: str | None) -> dict:
    """What Ray workers need of this process: its environment variables and this checkout or its code."""
    core_dir = Path(__file__).resolve().parents[1]
    env = {"TF_CPP_MIN_LOG_LEVEL": "2"}
    for k in ("ADE_REMOTE_CACHE", "ADE_STORAGE_OPTIONS", "AWS_ENDPOINT_URL", "TF_NUM_INTRAOP_THREADS"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    if address is None:  # a local cluster: the workers import this checkout
        env["PYTHONPATH"] = os.pathsep.join([str(core_dir.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        return {"env_vars": env}
    return {"env_vars": env, "py_modules": [str(core_dir)]}  # shipped to the cluster's workers


def sweep_on_ray(run: Run, run_ref: str, probes: ProbeSet, *, options: SweepOptions = SweepOptions(),
                 address: str | None = None, workers: int | None = None, progress: Progress | None = None,
                 engine: RunEngine | None = None) -> SweepResult:
    """Sweep ``run`` on Ray (a local cluster of ``workers`` CPUs, or the cluster at ``address``).

    ``run_ref`` is what the workers open: the run's URL, or its path (a local cluster or a
    shared file system).
    """
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        kw = {"num_cpus": workers or os.cpu_count()} if address is None else {}
        if address is None:  # Ray starts workers at nice 15: on a busy machine they would barely run
            os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env=runtime_env(address), **kw)
    try:
        engine = engine or RunEngine(run)
        key = sweep_key(run, engine, probes, options)
        driver_cache = str((run.cache_dir / key).resolve())
        ids = [c.mini_epoch for c in run.checkpoints()]
        n_workers = workers or int(ray.cluster_resources().get("CPU", 1))
        task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(sweep_task)
        probes_ref = ray.put(probes)
        pending = {task.remote(run_ref, part, probes_ref, options, driver_cache): part
                   for part in chunks(ids, default_pieces(n_workers, len(ids)))}
        done = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            part = pending.pop(ready[0])
            merge_bundle(run, key, ray.get(ready[0]))
            done += len(part)
            if progress:
                progress(done, len(ids), f"mini-epochs {part[0]}-{part[-1]} (ray)")
    finally:
        if started:
            ray.shutdown()
    return sweep(run, probes, engine=engine, options=options, progress=progress)


def shard_then_export(run: Run, probes: ProbeSet, *, shard: Shard, out: Path | None,
                      options: SweepOptions = SweepOptions(), progress: Progress | None = None) -> SweepResult:
    """``--shard I/N [--out DIR]``: sweep this shard; with ``out``, also write its bundle there for ``--merge``."""
    res, bundle = sweep_shard(run, shard, probes, options, progress=progress)
    if out is not None:
        bundle.write(out)
        print(f"shard {shard.index}/{shard.count}: {len(bundle.stamps)} cache entries written to {out}",
              file=sys.stderr)
    return res


def merge_then_sweep(run: Run, probes: ProbeSet, *, folders: Sequence[Path], options: SweepOptions = SweepOptions(),
                     progress: Progress | None = None) -> SweepResult:
    """``--merge DIR ...``: take the shards' bundles into this run's cache, then sweep (computing only what is missing)."""
    taken, engine = merge_folders(run, folders, probes, options)
    print(f"merged {taken} cache entries from {len(folders)} shard folder(s)", file=sys.stderr)
    return sweep(run, probes, engine=engine, options=options, progress=progress)


def sweeper(run_ref: str, *, ray: str | None = None, workers: int | None = None, shard: str | None = None,
            out: Path | None = None, merge: Sequence[Path] = ()) -> Callable[..., SweepResult]:
    """The sweep function the command line's flags ask for: ``sweep`` itself when none is given."""
    given = [f for f, v in (("--ray", ray), ("--shard", shard), ("--merge", merge)) if v]
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)} cannot be combined: run the shards, then merge them")
    if ray:
        import_ray()
        address = None if ray == "local" else ray
        return lambda run, probes, **kw: sweep_on_ray(run, run_ref, probes, address=address, workers=workers, **kw)
    if shard:
        try:
            sh = Shard.parse(shard)
        except ValueError as e:
            raise UserError(str(e)) from None
        return functools.partial(shard_then_export, shard=sh, out=out)
    if merge:
        return functools.partial(merge_then_sweep, folders=list(merge))
    return sweep
