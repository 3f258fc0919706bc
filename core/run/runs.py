"""Run directories: the on-disk contract between training and the explorer (see docs/ARCHITECTURE.md)."""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import platform
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping

import numpy as np
import pandas as pd

from core.run.atomic import atomic_save_npz, atomic_write_json, atomic_write_text

FORMAT = "activation-dynamics-run"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARCHITECTURE = "model.keras"
CHECKPOINT_DIR = "checkpoints"
HISTORY = "history.csv"
PROBES = "probes.npz"
CACHE_DIR = "cache"
RESUME_DIR = "resume"
HISTORY_COLUMNS = ("mini_epoch", "images_seen", "wall_time", "loss", "accuracy",
                   "val_loss", "val_accuracy", "lr")
_CKPT_RE = re.compile(r"^ckpt_(\d{6,})\.npz$")
_RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
DEFAULT_RUNS_ROOT = Path(__file__).resolve().parents[2] / "data" / "runs"


class RunError(Exception):
    """A run (or one of its files) cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def runs_root_from_env() -> Path:
    """The runs root: ``$ADE_RUNS_ROOT`` or ``data/runs`` in the repository."""
    return Path(os.environ.get("ADE_RUNS_ROOT") or DEFAULT_RUNS_ROOT)


def checkpoint_filename(mini_epoch: int) -> str:
    return f"ckpt_{mini_epoch:06d}.npz"


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


@dataclass(frozen=True)
class Manifest:
    """The parsed, validated manifest; ``raw`` keeps every field for forward compatibility."""

    name: str
    format_version: int
    input_height: int
    input_width: int
    input_channels: int
    preprocessing: dict[str, Any]
    class_names: tuple[str, ...]
    mini_epoch_images: int
    training: dict[str, Any]
    dataset: dict[str, Any]
    versions: dict[str, Any]
    created: str
    architecture_file: str
    external_checkpoints: tuple[dict[str, Any], ...] | None
    raw: dict[str, Any] = field(repr=False, compare=False, hash=False, default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.input_height, self.input_width, self.input_channels)


def _require(d: Mapping[str, Any], key: str, typ: type | tuple[type, ...], path: Path) -> Any:
    if key not in d:
        raise RunError(path, f"manifest lacks the field {key!r}")
    v = d[key]
    if not isinstance(v, typ) or isinstance(v, bool) and typ is int:
        raise RunError(path, f"manifest field {key!r} should be {typ}, got {type(v).__name__}")
    return v


def parse_manifest(raw: Any, path: Path) -> Manifest:
    """Validate the manifest JSON object; raises RunError naming the field that is wrong."""
    if not isinstance(raw, dict):
        raise RunError(path, "manifest is not a JSON object")
    if raw.get("format") != FORMAT:
        raise RunError(path, f"not a run manifest (format {raw.get('format')!r}, expected {FORMAT!r})")
    ver = _require(raw, "format_version", int, path)
    if ver > FORMAT_VERSION:
        raise RunError(path, f"manifest format_version {ver} is newer than this app supports "
                             f"({FORMAT_VERSION}); upgrade Activation Dynamics Explorer")
    if ver < 1:
        raise RunError(path, f"invalid format_version {ver}")
    inp = _require(raw, "input", dict, path)
    try:
        h, w, c = int(inp["height"]), int(inp["width"]), int(inp["channels"])
    except (KeyError, TypeError, ValueError):
        raise RunError(path, "manifest 'input' needs integer height, width and channels") from None
    if min(h, w, c) < 1 or c > 4:
        raise RunError(path, f"manifest input shape {(h, w, c)} is invalid")
    ext = raw.get("external_checkpoints")
    if ext is not None and not (isinstance(ext, list) and all(isinstance(e, dict) for e in ext)):
        raise RunError(path, "manifest 'external_checkpoints' must be a list of objects")
    return Manifest(
        name=str(raw.get("name") or path.parent.name),
        format_version=ver,
        input_height=h, input_width=w, input_channels=c,
        preprocessing=dict(inp.get("preprocessing") or {"kind": "none"}),
        class_names=tuple(str(x) for x in raw.get("class_names") or ()),
        mini_epoch_images=int(raw.get("mini_epoch_images") or 0),
        training=dict(raw.get("training") or {}),
        dataset=dict(raw.get("dataset") or {}),
        versions=dict(raw.get("versions") or {}),
        created=str(raw.get("created") or ""),
        architecture_file=str(raw.get("architecture_file") or ARCHITECTURE),
        external_checkpoints=tuple(ext) if ext is not None else None,
        raw=raw,
    )


def make_manifest(name: str, input_shape: tuple[int, int, int], *, preprocessing: Mapping[str, Any],
                  class_names: Iterable[str] = (), mini_epoch_images: int = 0,
                  training: Mapping[str, Any] | None = None, dataset: Mapping[str, Any] | None = None,
                  external_checkpoints: list[dict[str, Any]] | None = None,
                  architecture_file: str = ARCHITECTURE) -> dict[str, Any]:
    """A manifest dict in the current format, with framework versions filled in."""
    h, w, c = (int(v) for v in input_shape)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "name": name,
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "input": {"height": h, "width": w, "channels": c, "preprocessing": dict(preprocessing)},
        "class_names": list(class_names), "mini_epoch_images": int(mini_epoch_images),
        "training": dict(training or {}), "dataset": dict(dataset or {}),
        "versions": framework_versions(), "architecture_file": architecture_file,
        "external_checkpoints": external_checkpoints,
    }


def framework_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "app": "0.1"}
    for pkg, key in (("tensorflow-cpu", "tensorflow"), ("tensorflow", "tensorflow"), ("keras", "keras"),
                     ("numpy", "numpy")):
        if key in out:
            continue
        try:
            out[key] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _num(s: str) -> float:
    s = s.strip()
    return math.nan if s == "" else float(s)


def parse_history(text: str, path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Parse history CSV text; malformed rows (e.g. a torn last row) are dropped and reported.

    Returns (frame sorted by mini_epoch with one row per mini_epoch, problems).
    """
    problems: list[str] = []
    lines = text.splitlines()
    if not lines:
        return pd.DataFrame(columns=list(HISTORY_COLUMNS)), problems
    header = next(csv.reader([lines[0]]))
    if "mini_epoch" not in header:
        raise RunError(path, "history has no 'mini_epoch' column in its header")
    torn_tail = not text.endswith("\n")
    rows: list[dict[str, float]] = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = next(csv.reader([line]))
        last = i == len(lines)
        try:
            if len(fields) != len(header):
                raise ValueError(f"{len(fields)} fields, expected {len(header)}")
            row = {k: _num(v) for k, v in zip(header, fields)}
            if not math.isfinite(row["mini_epoch"]) or row["mini_epoch"] < 0:
                raise ValueError("bad mini_epoch")
            if last and torn_tail:
                raise ValueError("line not terminated (being written?)")
        except ValueError as e:
            problems.append(f"{path.name} line {i} ignored ({'torn last row' if last else 'malformed'}: {e})")
            continue
        rows.append(row)
    df = pd.DataFrame(rows, columns=list(dict.fromkeys([*HISTORY_COLUMNS, *header])))
    if len(df):
        df["mini_epoch"] = df["mini_epoch"].astype("int64")
        dup = df["mini_epoch"].duplicated(keep="last")
        if dup.any():
            problems.append(f"{path.name}: duplicate rows for mini-epochs "
                            f"{sorted(set(df.loc[dup, 'mini_epoch'].tolist()))}; kept the last")
            df = df[~dup]
        df = df.sort_values("mini_epoch").reset_index(drop=True)
    return df, problems


def format_history(df: pd.DataFrame) -> str:
    cols = list(dict.fromkeys([*HISTORY_COLUMNS, *df.columns]))
    buf = io.StringIO()
    df.reindex(columns=cols).to_csv(buf, index=False, lineterminator="\n", float_format="%.9g")
    return buf.getvalue()


class Run:
    """A run directory, read lazily; every problem found is collected in ``problems``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.problems: list[str] = []
        self._manifest: Manifest | None = None

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def cache_dir(self) -> Path:
        return self.path / CACHE_DIR

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            p = self.path / MANIFEST
            try:
                raw = json.loads(p.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise RunError(p, "missing: this folder is not a run (no manifest.json)") from None
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise RunError(p, f"not valid JSON ({e}); the manifest is damaged") from None
            self._manifest = parse_manifest(raw, p)
        return self._manifest

    @property
    def architecture_path(self) -> Path:
        a = Path(self.manifest.architecture_file)
        return a if a.is_absolute() else self.path / a

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
                    st = p.stat()
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
        """History as a DataFrame (one row per mini-epoch); empty frame when there is none yet."""
        p = self.path / HISTORY
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return pd.DataFrame(columns=list(HISTORY_COLUMNS))
        df, problems = parse_history(text, p)
        for pr in problems:
            self._problem(pr)
        return df

    def probes(self) -> tuple[np.ndarray, np.ndarray]:
        """The fixed probe set: x uint8 (N, H, W, C), y int64 (N,); empty arrays if absent."""
        p = self.path / PROBES
        h, w, c = self.manifest.input_shape
        if not p.exists():
            return np.zeros((0, h, w, c), np.uint8), np.zeros((0,), np.int64)
        try:
            with np.load(p, allow_pickle=False) as z:
                x, y = np.asarray(z["x"]), np.asarray(z["y"]).astype(np.int64)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
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
        with np.load(path, allow_pickle=False) as z:
            keys = z.files if names is None else [k for k in z.files if k in names]
            return {k: np.asarray(z[k]) for k in keys}
    except FileNotFoundError:
        raise RunError(path, "checkpoint file disappeared (deleted or being replaced); reload") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise RunError(path, f"unreadable or truncated checkpoint ({type(e).__name__}: {e})") from None


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


class RunWriter:
    """Writes a run directory (used by the trainer and the recorder callback); every write is atomic."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def create(self, manifest: Mapping[str, Any], model=None, probes: tuple[np.ndarray, np.ndarray] | None = None,
               overwrite: bool = False) -> None:
        if (self.path / MANIFEST).exists() and not overwrite:
            raise RunError(self.path, "a run already exists here; pick another name or resume it")
        (self.path / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        if model is not None:
            tmp = self.path / f".{ARCHITECTURE}.tmp.keras"
            model.save(tmp)
            os.replace(tmp, self.path / ARCHITECTURE)
        if probes is not None:
            x, y = probes
            atomic_save_npz(self.path / PROBES, {"x": np.asarray(x, np.uint8), "y": np.asarray(y, np.int64)})
        atomic_write_json(self.path / MANIFEST, dict(manifest))

    def write_checkpoint(self, mini_epoch: int, weights: Mapping[str, np.ndarray]) -> Path:
        p = self.path / CHECKPOINT_DIR / checkpoint_filename(mini_epoch)
        atomic_save_npz(p, weights)
        return p

    def write_history(self, df: pd.DataFrame) -> None:
        atomic_write_text(self.path / HISTORY, format_history(df))

    def append_history(self, row: Mapping[str, Any]) -> pd.DataFrame:
        """Add (or replace) the row for ``row['mini_epoch']`` and rewrite the file atomically."""
        df = Run(self.path).history()
        df = df[df["mini_epoch"] != int(row["mini_epoch"])]
        new = pd.DataFrame([{k: row.get(k, math.nan) for k in dict.fromkeys([*HISTORY_COLUMNS, *row])}])
        df = pd.concat([df, new], ignore_index=True) if len(df) else new
        df["mini_epoch"] = df["mini_epoch"].astype("int64")
        df = df.sort_values("mini_epoch").reset_index(drop=True)
        self.write_history(df)
        return df

    def truncate_after(self, mini_epoch: int) -> None:
        """Drop checkpoints and history rows after ``mini_epoch`` (used by resume)."""
        run = Run(self.path)
        df = run.history()
        self.write_history(df[df["mini_epoch"] <= mini_epoch])
        for c in run.checkpoints():
            if c.mini_epoch > mini_epoch:
                c.path.unlink(missing_ok=True)


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
