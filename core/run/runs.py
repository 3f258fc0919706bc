"""Run directories: the on-disk contract between training and the explorer (see docs/ARCHITECTURE.md)."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Mapping

import numpy as np
import pandas as pd

from core.run.npzfile import NpzError, members, read_npz
from core.run.schema import (  # noqa: F401 - the run contract's names are imported from here too
    ARCHITECTURE, CACHE_DIR, CHECKPOINT_DIR, FORMAT, FORMAT_VERSION, HISTORY, HISTORY_COLUMNS, MANIFEST, PROBES,
    RESUME_DIR, Manifest, RunError, format_history, framework_versions, make_manifest, parse_history,
    parse_manifest, repair_hint,
)

_CKPT_RE = re.compile(r"^ckpt_(\d{6,})\.npz$")
_RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_RUNS_ROOT = Path(__file__).resolve().parents[2] / "data" / "runs"


def runs_root_from_env() -> Path:
    """The runs root: ``$ADE_RUNS_ROOT`` or ``data/runs`` in the repository."""
    return Path(os.environ.get("ADE_RUNS_ROOT") or DEFAULT_RUNS_ROOT)


def resolve_run_path(root: str | os.PathLike, name: str) -> Path:
    """Path of run ``name`` under ``root``; refuses anything that could leave the root.

    Only a single plain folder name is accepted: no separators, no ``..``, no
    absolute paths, no hidden names, and symlinks must resolve inside the root.
    """
    if not isinstance(name, str) or not _RUN_NAME_RE.match(name) or name in (".", ".."):
        raise RunError(name, "not a valid run name (letters, digits, '.', '_', '-'; "
                             "no paths): pick a run from the list")
    root_r = Path(root).resolve()
    p = (root_r / name).resolve()
    if p.parent != root_r:
        raise RunError(name, f"resolves outside the runs root {root_r}; refused")
    return p


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint file; ``identity`` changes when the file is rewritten."""

    mini_epoch: int
    path: Path
    kind: str = "npz"
    size: int = 0
    mtime_ns: int = 0

    @property
    def identity(self) -> tuple[str, int, int]:
        return (str(self.path), self.size, self.mtime_ns)


class Run:
    """A run directory, read lazily; every problem found is collected in ``problems``."""

    def __init__(self, path: str | os.PathLike, manifest: Manifest | None = None):
        self.path = Path(path)
        self.problems: list[str] = []
        self._manifest: Manifest | None = manifest  # given: the file is not read (e.g. a repair plan's)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, relative: str | os.PathLike) -> Path:
        """``relative`` inside the run; RunError when it (through a symlink) leaves the run folder."""
        p = self.path / relative
        try:
            real, root = p.resolve(), self.path.resolve()
        except (OSError, RuntimeError) as e:  # a symlink loop
            raise RunError(p, f"cannot be resolved ({e}); refused") from None
        if real != root and root not in real.parents:
            raise RunError(p, f"is a link to {real}, outside the run folder; refused (neither read nor written)")
        return p

    @property
    def cache_dir(self) -> Path:
        """The derived cache folder (RunError if it is a link leaving the run: nothing is written there)."""
        return self.file(CACHE_DIR)

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            p = self.file(MANIFEST)
            try:
                raw = json.loads(p.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise RunError(p, "missing: this folder is not a run (no manifest.json)") from None
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise RunError(p, f"not valid JSON ({e}); the manifest is damaged: {repair_hint(self.path)}") from None
            except OSError as e:
                raise RunError(p, f"unreadable ({e.strerror or e})") from None
            self._manifest = parse_manifest(raw, p)
        return self._manifest

    @property
    def architecture_path(self) -> Path:
        return self.file(self.manifest.architecture_file)

    def checkpoints(self) -> list[Checkpoint]:
        """Checkpoints ordered by mini-epoch; gaps and empty files are reported in ``problems``."""
        ext = self.manifest.external_checkpoints
        out: list[Checkpoint] = []
        if ext is not None:
            for e in ext:
                p = Path(e["path"])
                p = p if p.is_absolute() else self.path / p
                try:
                    st = p.stat()
                except OSError:
                    self._problem(f"{p}: checkpoint for mini-epoch {e.get('mini_epoch')} is missing")
                    continue
                out.append(Checkpoint(int(e["mini_epoch"]), p, str(e.get("kind", "keras-weights")),
                                      st.st_size, st.st_mtime_ns))
        else:
            d = self.path / CHECKPOINT_DIR
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                names = []
            for n in names:
                m = _CKPT_RE.match(n)
                if not m:
                    continue
                p = d / n
                try:
                    st = self.file(p.relative_to(self.path)).stat()
                except RunError as e:
                    self._problem(f"{e}; checkpoint ignored")
                    continue
                except OSError:
                    continue  # removed between listdir and stat
                if st.st_size == 0:
                    self._problem(f"{p}: empty checkpoint file ignored")
                    continue
                out.append(Checkpoint(int(m.group(1)), p, "npz", st.st_size, st.st_mtime_ns))
        out.sort(key=lambda c: c.mini_epoch)
        nums = [c.mini_epoch for c in out]
        if nums:
            missing = sorted(set(range(nums[0], nums[-1] + 1)) - set(nums))
            if missing:
                self._problem(f"{self.path / CHECKPOINT_DIR}: checkpoints missing for mini-epochs "
                              f"{_ranges(missing)}; the others are usable")
        return out

    def checkpoint(self, mini_epoch: int) -> Checkpoint:
        for c in self.checkpoints():
            if c.mini_epoch == mini_epoch:
                return c
        raise RunError(self.path / CHECKPOINT_DIR, f"no checkpoint for mini-epoch {mini_epoch}")

    def history(self) -> pd.DataFrame:
        """History as a DataFrame (one row per mini-epoch); empty frame when there is none yet.

        A damaged file (bad header, a link leaving the run, unreadable) gives an empty frame and
        a problem naming it: the rest of the run stays usable. ``history_strict`` raises instead.
        """
        try:
            return self.history_strict()[0]
        except RunError as e:
            self._problem(str(e))
            return pd.DataFrame(columns=list(HISTORY_COLUMNS))

    def history_strict(self) -> tuple[pd.DataFrame, list[str]]:
        """(history, problems with its rows); RunError when the file is damaged beyond its rows."""
        p = self.file(HISTORY)
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return pd.DataFrame(columns=list(HISTORY_COLUMNS)), []
        except OSError as e:
            raise RunError(p, f"unreadable ({e.strerror or e})") from None
        df, problems = parse_history(text, p)
        for pr in problems:
            self._problem(pr)
        return df, problems

    def probes(self) -> tuple[np.ndarray, np.ndarray]:
        """The fixed probe set: x uint8 (N, H, W, C), y int64 (N,); empty arrays if absent."""
        p = self.file(PROBES)
        h, w, c = self.manifest.input_shape
        if not p.exists():
            return np.zeros((0, h, w, c), np.uint8), np.zeros((0,), np.int64)
        try:
            mx = members(p).get("x")
            if mx is None or len(mx.shape) != 4 or mx.shape[1:] != (h, w, c):
                raise RunError(p, f"probe set 'x' declares shape {mx.shape if mx else None}, not (N, {h}, {w}, {c})")
            z = read_npz(p, ("x", "y"))
            x, y = z["x"], z["y"].astype(np.int64)
        except (OSError, NpzError, KeyError, ValueError, TypeError) as e:
            raise RunError(p, f"unreadable probe set ({type(e).__name__}: {e})") from None
        if x.ndim != 4 or x.shape[1:] != (h, w, c) or len(y) != len(x):
            raise RunError(p, f"probe set shape {x.shape} does not match the input {(h, w, c)}")
        return x, y

    def read_weights(self, ckpt: Checkpoint | int, architecture=None,
                     names: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """Weight arrays of one checkpoint by Keras ``variable.path``.

        Our own checkpoints are plain npz archives (``names``: read only these); foreign ones
        go through ``core.run.loading.read_weights_file``, are read whole and need the architecture model.
        """
        if isinstance(ckpt, int):
            ckpt = self.checkpoint(ckpt)
        if ckpt.kind == "npz":
            return read_npz_weights(ckpt.path, names)
        from core.run.loading import read_weights_file  # foreign formats need Keras

        if architecture is None:
            architecture = self.load_model()
        return read_weights_file(ckpt.path, architecture)

    def load_model(self, trust: bool = False):
        """The run's architecture as a Keras model (safe mode unless ``trust``)."""
        from core.run.loading import load_model_file

        return load_model_file(self.architecture_path, trust=trust)

    def load_weights_into(self, model, mini_epoch: int) -> None:
        """Assign a checkpoint's weights to ``model`` (matched by ``variable.path``)."""
        assign_weights(model, self.read_weights(mini_epoch, architecture=model))

    def complete_mini_epochs(self) -> list[int]:
        """Mini-epochs with both a checkpoint and a history row (0 needs no row).

        Imported runs have no writer in progress and often no history: all their checkpoints count.
        """
        if self.manifest.external_checkpoints is not None:
            return [c.mini_epoch for c in self.checkpoints()]
        hist = set(self.history()["mini_epoch"].tolist())
        return [c.mini_epoch for c in self.checkpoints() if c.mini_epoch == 0 or c.mini_epoch in hist]

    def _problem(self, msg: str) -> None:
        if msg not in self.problems:
            self.problems.append(msg)


def read_npz_weights(path: Path, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """Read an npz checkpoint (only the arrays in ``names``, if given) without pickle.

    Damage raises RunError naming the file.
    """
    try:
        return read_npz(path, names)
    except FileNotFoundError:
        raise RunError(path, "checkpoint file disappeared (deleted or being replaced); reload") from None
    except NpzError as e:
        raise RunError(path, f"unreadable checkpoint: {e}") from None
    except OSError as e:
        raise RunError(path, f"unreadable checkpoint ({type(e).__name__}: {e})") from None


def model_weights(model) -> dict[str, np.ndarray]:
    """All of a model's variables by ``variable.path``."""
    return {v.path: np.asarray(v.numpy()) for v in model.weights}


def assign_weights(model, weights: Mapping[str, np.ndarray]) -> None:
    """Assign arrays by ``variable.path``; names or shapes that do not match raise ValueError."""
    problems = []
    for v in model.weights:
        if v.path not in weights:
            problems.append(f"missing {v.path}")
        elif tuple(weights[v.path].shape) != tuple(v.shape):
            problems.append(f"{v.path}: shape {tuple(weights[v.path].shape)} != {tuple(v.shape)}")
    if problems:
        raise ValueError("checkpoint does not match the architecture: " + "; ".join(problems[:10])
                         + (f" (+{len(problems) - 10} more)" if len(problems) > 10 else ""))
    for v in model.weights:
        v.assign(weights[v.path])


@dataclass(frozen=True)
class RunInfo:
    """One entry of the run picker; ``error`` is set when the run cannot be opened."""

    name: str
    path: Path
    error: str | None = None
    n_checkpoints: int = 0


def list_runs(root: str | os.PathLike) -> list[RunInfo]:
    """Every sub-folder of ``root`` with a manifest.json, sorted by name; broken runs carry an error."""
    root = Path(root)
    if not root.is_dir():
        return []
    root_r = root.resolve()
    out = []
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith(".") or not (d / MANIFEST).exists():
            continue
        if d.resolve().parent != root_r:  # a symlinked run leaving the root: say so, read nothing there
            out.append(RunInfo(d.name, d, f"{d}: resolves outside the runs root {root_r}; refused", 0))
            continue
        run = Run(d)
        try:
            _ = run.manifest
            n = len(run.checkpoints())
            out.append(RunInfo(d.name, d, None, n))
        except RunError as e:
            out.append(RunInfo(d.name, d, str(e), 0))
    return out


def open_run(root: str | os.PathLike, name: str) -> Run:
    """Open run ``name`` under ``root`` (path-traversal safe) and validate its manifest."""
    run = Run(resolve_run_path(root, name))
    if not run.path.is_dir():
        raise RunError(run.path, "no such run")
    _ = run.manifest
    return run


def _ranges(nums: list[int]) -> str:
    parts, start, prev = [], None, None
    for n in nums:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            parts.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = n
    if start is not None:
        parts.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(parts)


from core.run.writer import RunWriter, checkpoint_filename  # noqa: E402,F401 - the writer needs Run; importers find it here
