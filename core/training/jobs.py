"""Training jobs: the trainer in its own process, one at a time per runs root; status, cancel, resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from core.run.atomic import atomic_write_json
from core.run.runs import Run, RunError, resolve_run_path
from core.training.trainer import SIDE_FILES, STATUS, TrainConfig, read_status

try:  # POSIX: the lock is an flock held by the training process, released by the kernel when it dies
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parents[2]
LOCK = ".training.lock"
LOG = "train.log"
JOB = "job.json"
DEFAULT_DATA_ROOT = REPO / "data" / "datasets"
FINAL_STATES = ("done", "cancelled", "failed", "died")
assert {LOG, JOB, STATUS} <= SIDE_FILES  # the trainer must accept a folder holding only these

# Popen objects of the jobs this process started: poll() reaps them, so a finished child never
# lingers as a zombie that still looks alive.
_CHILDREN: dict[int, subprocess.Popen] = {}


class JobError(Exception):
    """A job cannot be started, resumed or cancelled; the message says why and what to do."""


class Busy(JobError):
    """Another training holds the runs root's lock."""

    def __init__(self, holder: "Holder"):
        self.holder = holder
        what = f"run {holder.run!r}" if holder.run else "another run"
        super().__init__(f"A training is already running ({what}, pid {holder.pid}); only one runs at a time. "
                         "Wait for it to finish or cancel it, then start again.")


@dataclass(frozen=True)
class Holder:
    """Who holds the training lock of a runs root."""

    pid: int | None
    run: str | None
    started: float | None


@dataclass(frozen=True)
class JobStatus:
    """A training job as seen from outside: its state, progress and process liveness.

    ``state``: none (no job here), starting, running, stopping (cancel seen: ends after this batch),
    done, cancelled, failed,
    or died (the process ended without saying so: killed, out of memory...).
    """

    state: str
    alive: bool = False
    pid: int | None = None
    mini_epoch: int = 0
    mini_epochs: int = 0
    images_done: int = 0
    images_total: int = 0
    images_per_s: float = 0.0
    eta_s: float | None = None
    elapsed_s: float = 0.0
    error: str | None = None
    updated: float | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.images_done / self.images_total) if self.images_total else 0.0

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running", "stopping")

    @property
    def can_resume(self) -> bool:
        return self.state in ("cancelled", "failed", "died") or (self.state == "done"
                                                                 and self.mini_epoch < self.mini_epochs)


# -- data root ------------------------------------------------------------------
def data_root_from_env() -> Path:
    """Where image-folder data sets may live: ``$ADE_DATA_ROOT`` or ``data/datasets`` in the repository."""
    return Path(os.environ.get("ADE_DATA_ROOT") or DEFAULT_DATA_ROOT)


def resolve_dataset(data_root: str | os.PathLike, folder: str) -> Path:
    """The image folder ``folder`` (relative to, or inside, ``data_root``); anything outside is refused."""
    root = Path(data_root).resolve()
    p = Path(folder)
    p = (p if p.is_absolute() else root / p).resolve()
    if p != root and root not in p.parents:
        raise JobError(f"{folder}: outside the data root {root}; put image folders under it "
                       "(or set ADE_DATA_ROOT)")
    if not p.is_dir():
        raise JobError(f"{folder}: no such folder under the data root {root}")
    return p


def list_datasets(data_root: str | os.PathLike) -> list[str]:
    """Sub-folders of the data root (candidate image-folder data sets), sorted."""
    root = Path(data_root)
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def check_config(cfg: TrainConfig, data_root: str | os.PathLike | None) -> TrainConfig:
    """Validate what a job would fail on late; folder data sets must lie under ``data_root``.

    Returns the config with the data set path resolved.
    """
    if cfg.dataset == "synthetic":
        return cfg
    if data_root is None:
        raise JobError("image-folder data sets need a data root")
    path = resolve_dataset(data_root, cfg.dataset)
    from core.training.data import list_image_folder

    try:
        _, _, names = list_image_folder(path)
    except ValueError as e:
        raise JobError(str(e)) from None
    if len(names) != cfg.arch.num_classes:
        raise JobError(f"{path.name} has {len(names)} classes; set the number of classes to {len(names)}")
    return replace(cfg, dataset=str(path))


# -- lock -----------------------------------------------------------------------
def _lock_path(runs_root: str | os.PathLike) -> Path:
    return Path(runs_root) / LOCK


def _read_holder(path: Path) -> Holder:
    try:
        d = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        d = {}
    return Holder(d.get("pid"), d.get("run"), d.get("started"))


def _try_lock(runs_root: str | os.PathLike) -> int | None:
    """An fd holding the runs root's lock, or None when another process holds it."""
    path = _lock_path(runs_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:  # pragma: no cover - without flock: a pid file, stale when the pid is dead
        h = _read_holder(path)
        if h.pid and pid_alive(h.pid):
            os.close(fd)
            return None
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def lock_holder(runs_root: str | os.PathLike) -> Holder | None:
    """The training holding the runs root's lock, or None when no training runs."""
    path = _lock_path(runs_root)
    if not path.exists():
        return None
    try:
        fd = _try_lock(runs_root)
    except OSError:
        return None
    if fd is None:
        return _read_holder(path)
    os.close(fd)  # closing releases the lock we just took
    return None


# -- processes ------------------------------------------------------------------
def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie or a reused pid of another program counts as dead)."""
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)
            return False
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path(f"/proc/{pid}")
    try:
        if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
        return b"core" in (proc / "cmdline").read_bytes()  # python -m core.training.jobs / python -m core train
    except (OSError, IndexError):
        return True  # no /proc (macOS): trust kill(0)


def command(run_dir: Path, resume: bool) -> list[str]:
    """The child's command line: this module's ``main`` in a fresh interpreter."""
    return [sys.executable, "-m", "core.training.jobs", str(run_dir)] + (["--resume"] if resume else [])


def _read_job(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / JOB).read_text())
    except (OSError, ValueError):
        return {}


def _spawn(runs_root: Path, run_dir: Path, cfg: TrainConfig, resume: bool) -> JobStatus:
    fd = _try_lock(runs_root)
    if fd is None:
        raise Busy(_read_holder(_lock_path(runs_root)))
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        job = {"config": cfg.to_dict(), "resume": resume, "pid": None, "started": time.time(),
               "cancel_requested": False}
        atomic_write_json(run_dir / JOB, job)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONUNBUFFERED"] = "1"
        with open(run_dir / LOG, "ab") as log:
            log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {'resume' if resume else 'start'} ==\n".encode())
            log.flush()
            # A new session: the job survives the app (and a Ctrl-C in its terminal); the lock fd is
            # inherited, so the lock lives exactly as long as the training process.
            proc = subprocess.Popen(command(run_dir, resume), cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    pass_fds=(fd,), close_fds=True)
        _CHILDREN[proc.pid] = proc
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": proc.pid, "run": run_dir.name, "started": job["started"]}).encode(), 0)
        atomic_write_json(run_dir / JOB, {**job, "pid": proc.pid})
    finally:
        os.close(fd)
    return JobStatus("starting", alive=True, pid=proc.pid, mini_epochs=cfg.mini_epochs)


def start(runs_root: str | os.PathLike, name: str, cfg: TrainConfig, *,
          data_root: str | os.PathLike | None = None) -> JobStatus:
    """Start training a new run ``name`` under ``runs_root`` in a separate process.

    Raises Busy when another training holds the runs root's lock, JobError when
    the run exists or the config cannot work (folder data sets must lie under
    ``data_root``). Output goes to ``<run>/train.log``.
    """
    try:
        run_dir = resolve_run_path(runs_root, name)
    except RunError as e:
        raise JobError(str(e)) from None
    if run_dir.exists() and any(n not in SIDE_FILES for n in os.listdir(run_dir)):
        raise JobError(f"a run named {name!r} already exists; pick another name (or resume it)")
    cfg = check_config(cfg, data_root)
    return _spawn(Path(runs_root), run_dir, cfg, resume=False)


def resume(run_dir: str | os.PathLike, mini_epochs: int | None = None) -> JobStatus:
    """Continue a run after its last complete checkpoint, up to ``mini_epochs`` (default: as planned)."""
    run_dir = Path(run_dir)
    st = status(run_dir)
    if st.alive:
        raise JobError(f"{run_dir.name} is still training")
    cfg_d = _read_job(run_dir).get("config")
    if cfg_d is None:
        try:
            cfg_d = Run(run_dir).manifest.training
        except RunError as e:
            raise JobError(str(e)) from None
    try:
        cfg = TrainConfig.from_dict(cfg_d)
    except (TypeError, ValueError) as e:
        raise JobError(f"{run_dir.name} was not made by the built-in trainer, so it cannot be resumed here "
                       f"({e})") from None
    if mini_epochs is not None:
        cfg = replace(cfg, mini_epochs=int(mini_epochs))
    done = complete_mini_epochs(run_dir)
    if done >= cfg.mini_epochs:
        raise JobError(f"{run_dir.name} already has {done} complete mini-epochs: set more than {done} "
                       "mini-epochs in total to continue it")
    return _spawn(run_dir.parent, run_dir, cfg, resume=True)


def complete_mini_epochs(run_dir: str | os.PathLike) -> int:
    """The last mini-epoch with a checkpoint and a history row (0 when none, or no readable run yet)."""
    try:
        done = Run(Path(run_dir)).complete_mini_epochs()
    except RunError:
        return 0
    return max(done, default=0)


def cancel(run_dir: str | os.PathLike) -> bool:
    """Ask the run's training process to stop after the current batch (SIGTERM); False if none runs."""
    run_dir = Path(run_dir)
    job = _read_job(run_dir)
    pid = job.get("pid") or (read_status(run_dir) or {}).get("pid")  # the latter: a CLI training
    if not pid or not pid_alive(int(pid)):
        return False
    if job:
        atomic_write_json(run_dir / JOB, {**job, "cancel_requested": True})
    try:
        os.kill(int(pid), signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def combine_status(trainer: Mapping[str, Any] | None, job: Mapping[str, Any], alive: bool) -> JobStatus:
    """The job state from the trainer's status file, the launcher's job file and liveness; pure."""
    pid = job.get("pid")
    if trainer is not None and pid is not None and trainer.get("pid") not in (None, pid):
        trainer = None  # left by an earlier process (a resumed run): not this job's news yet
    t = dict(trainer or {})
    fields = {k: t[k] for k in ("mini_epoch", "mini_epochs", "images_done", "images_total", "images_per_s",
                                "eta_s", "elapsed_s") if t.get(k) is not None}
    fields.setdefault("mini_epochs", int((job.get("config") or {}).get("mini_epochs") or 0))
    base = JobStatus("none", alive=alive, pid=pid, updated=t.get("updated"), error=t.get("error"), **fields)
    said = t.get("state")
    if alive:
        return replace(base, state=said if said in ("starting", "running", "stopping") else
                       ("running" if said else "starting"))
    if said in ("done", "cancelled", "failed"):
        return replace(base, state=said)
    if not job and not t:
        return base
    if job.get("cancel_requested"):
        return replace(base, state="cancelled")
    return replace(base, state="died", error=base.error or "the training process ended without finishing "
                   "(killed, or crashed before it could report); Resume continues from the last complete checkpoint")


def status(run_dir: str | os.PathLike) -> JobStatus:
    """The run's job state and progress: ``train_status.json`` (written ~1/s by the trainer) + liveness."""
    run_dir = Path(run_dir)
    job = _read_job(run_dir)
    trainer = read_status(run_dir)
    pid = job.get("pid") or (trainer or {}).get("pid")
    alive = bool(pid) and pid_alive(int(pid))
    return combine_status(trainer, job, alive)


def log_tail(run_dir: str | os.PathLike, max_bytes: int = 4000) -> str:
    """The end of the job's log (for failures)."""
    p = Path(run_dir) / LOG
    try:
        with open(p, "rb") as f:
            f.seek(max(0, p.stat().st_size - max_bytes))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def wait(run_dir: str | os.PathLike, timeout: float = 600.0, poll: float = 0.5) -> JobStatus:
    """Block until the run's job is no longer active (for scripts and tests)."""
    t_end = time.monotonic() + timeout
    while True:
        st = status(run_dir)
        if not st.alive or time.monotonic() > t_end:
            return st
        time.sleep(poll)


# -- the child process ------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    """``python -m core.training.jobs RUN_DIR [--resume]``: train with the config in ``RUN_DIR/job.json``."""
    import argparse

    from core.training.trainer import train, write_status

    p = argparse.ArgumentParser(prog="python -m core.training.jobs")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    job = _read_job(args.run_dir)
    if "config" not in job:
        print(f"error: {args.run_dir / JOB} has no training config", file=sys.stderr)
        return 2
    cfg = TrainConfig.from_dict(job["config"])
    print(f"training {args.run_dir} (pid {os.getpid()}): {cfg.mini_epochs} mini-epochs of "
          f"{cfg.mini_epoch_images} images", flush=True)

    def said(me: int, row: dict[str, Any]) -> None:
        print(f"mini-epoch {me}/{cfg.mini_epochs}: loss {row['loss']:.4f} acc {row['accuracy']:.3f} "
              f"val_loss {row['val_loss']:.4f} val_acc {row['val_accuracy']:.3f} "
              f"({row['wall_time']:.0f} s)", flush=True)

    try:
        train(cfg, args.run_dir, resume=args.resume, handle_signals=True, on_checkpoint=said)
    except BaseException as e:
        if (read_status(args.run_dir) or {}).get("state") != "failed":  # failed before fit: say so
            write_status(args.run_dir, state="failed", error=f"{type(e).__name__}: {e}",
                         mini_epochs=cfg.mini_epochs)
        if isinstance(e, (RunError, ValueError)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    print(f"finished: {(read_status(args.run_dir) or {}).get('state')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
