"""The run directory's schema: file names, the manifest model and the history table, validated in one place.

Everything a run's files declare is checked here before any other module sees it: a
wrongly typed field raises :class:`RunError` naming the file and the field, so one
damaged run is listed as damaged and every other run keeps working.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping

import pandas as pd

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
#: Integer columns of the history: a value that is not a whole number in range makes the row invalid.
HISTORY_INT_COLUMNS = ("mini_epoch", "images_seen")
#: Largest mini-epoch / image count accepted (beyond int64-safe float precision values are not exact).
MAX_HISTORY_INT = 2 ** 53


class RunError(Exception):
    """A run (or one of its files) cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def repair_hint(run_dir: str | os.PathLike) -> str:
    """What to run to rebuild a damaged manifest or history (keeps the damaged file beside it)."""
    return f"inspect it, or rebuild it with: python -m core repair {run_dir}"


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


class _Fields:
    """Typed access to one JSON object of the manifest; every failure names the field."""

    def __init__(self, obj: Mapping[str, Any], path: Path, where: str = ""):
        self.obj, self.path, self.where = obj, path, where

    def _fail(self, key: str, wanted: str) -> RunError:
        return RunError(self.path, f"manifest field '{self.where}{key}' must be {wanted}, "
                                   f"got {_short(self.obj.get(key))}; " + repair_hint(self.path.parent))

    def integer(self, key: str, default: int | None = None, lo: int = 0, hi: int = MAX_HISTORY_INT) -> int:
        if key not in self.obj and default is None:
            raise RunError(self.path, f"manifest lacks the field '{self.where}{key}'; " + repair_hint(self.path.parent))
        v = self.obj.get(key)
        v = default if v is None and default is not None else v
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self._fail(key, f"an integer from {lo} to {hi}")
        return v

    def text(self, key: str, default: str = "") -> str:
        v = self.obj.get(key)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self._fail(key, "a string")
        return v

    def mapping(self, key: str) -> dict[str, Any]:
        v = self.obj.get(key)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self._fail(key, "an object ({...})")
        return dict(v)


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _relative_inside(value: str, path: Path, key: str) -> str:
    """A path the manifest names inside the run folder: relative, no '..' (symlinks are checked on use)."""
    p = PurePosixPath(value.replace("\\", "/"))
    if not value or p.is_absolute() or ".." in p.parts or Path(value).is_absolute():
        raise RunError(path, f"manifest field {key!r} must name a file inside the run folder, got {_short(value)}; "
                             "refused")
    return value


def _external(ext: Any, path: Path) -> tuple[dict[str, Any], ...] | None:
    if ext is None:
        return None
    bad = RunError(path, "manifest field 'external_checkpoints' must be a list of objects with an integer "
                         "'mini_epoch' >= 0, a string 'path' and optionally a string 'kind'; "
                         + repair_hint(path.parent))
    if not isinstance(ext, list):
        raise bad
    out = []
    for e in ext:
        if not isinstance(e, dict):
            raise bad
        me, p, kind = e.get("mini_epoch"), e.get("path"), e.get("kind", "keras-weights")
        if isinstance(me, bool) or not isinstance(me, int) or me < 0 or not isinstance(p, str) or not p \
                or not isinstance(kind, str):
            raise bad
        out.append({**e, "mini_epoch": me, "path": p, "kind": kind})
    return tuple(out)


def _preprocessing(inp: Mapping[str, Any], path: Path) -> dict[str, Any]:
    from core.run.preprocess import PreprocessSpec

    pre = inp.get("preprocessing")
    if pre is None:
        return {"kind": "none"}
    try:
        PreprocessSpec.from_dict(pre)
    except (ValueError, TypeError) as e:
        raise RunError(path, f"manifest field 'input.preprocessing' is invalid ({e}); "
                             + repair_hint(path.parent)) from None
    return dict(pre)


def _class_names(v: Any, path: Path) -> tuple[str, ...]:
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
        raise RunError(path, "manifest field 'class_names' must be a list of strings; " + repair_hint(path.parent))
    return tuple(str(x) for x in v)


def parse_manifest(raw: Any, path: Path) -> Manifest:
    """Validate the manifest JSON object; raises RunError naming the field that is wrong."""
    if not isinstance(raw, dict):
        raise RunError(path, "manifest is not a JSON object; " + repair_hint(path.parent))
    if raw.get("format") != FORMAT:
        raise RunError(path, f"not a run manifest (format {_short(raw.get('format'))}, expected {FORMAT!r})")
    top = _Fields(raw, path)
    ver = top.integer("format_version", lo=0, hi=10 ** 6)
    if ver > FORMAT_VERSION:
        raise RunError(path, f"manifest format_version {ver} is newer than this app supports "
                             f"({FORMAT_VERSION}); upgrade Activation Dynamics Explorer")
    if ver < 1:
        raise RunError(path, f"invalid format_version {ver}")
    inp_raw = raw.get("input")
    if inp_raw is None:
        raise RunError(path, "manifest lacks the field 'input'; " + repair_hint(path.parent))
    if not isinstance(inp_raw, dict):
        raise RunError(path, "manifest 'input' needs integer height, width and channels; " + repair_hint(path.parent))
    inp = _Fields(inp_raw, path, "input.")
    h, w = inp.integer("height", lo=1, hi=65536), inp.integer("width", lo=1, hi=65536)
    c = inp.integer("channels", lo=1, hi=4)
    return Manifest(
        name=top.text("name") or path.parent.name,
        format_version=ver,
        input_height=h, input_width=w, input_channels=c,
        preprocessing=_preprocessing(inp_raw, path),
        class_names=_class_names(raw.get("class_names"), path),
        mini_epoch_images=top.integer("mini_epoch_images", default=0),
        training=top.mapping("training"),
        dataset=top.mapping("dataset"),
        versions=top.mapping("versions"),
        created=top.text("created"),
        architecture_file=_relative_inside(top.text("architecture_file", ARCHITECTURE), path, "architecture_file"),
        external_checkpoints=_external(raw.get("external_checkpoints"), path),
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


# -- history ----------------------------------------------------------------------------------
def _num(s: str) -> float:
    s = s.strip()
    return math.nan if s == "" else float(s)


def _check_row(row: dict[str, float]) -> None:
    """Integer columns must hold whole numbers in range: 3.7 or 1e300 make the row invalid (never rounded)."""
    for k in HISTORY_INT_COLUMNS:
        v = row.get(k)
        if v is None or (k != "mini_epoch" and math.isnan(v)):
            continue
        if not math.isfinite(v) or v < 0 or v > MAX_HISTORY_INT or v != int(v):
            raise ValueError(f"{k} {v!r} is not a whole number from 0 to {MAX_HISTORY_INT}")


def parse_header(line: str, path: Path) -> list[str]:
    """The history's column names; RunError when the header is damaged (no mini_epoch, duplicates, empty)."""
    header = [h.strip() for h in next(csv.reader([line]), [])]
    if "mini_epoch" not in header:
        raise RunError(path, "history header has no 'mini_epoch' column (damaged header); " + repair_hint(path.parent))
    if len(set(header)) != len(header) or any(not h for h in header):
        raise RunError(path, f"history header has empty or repeated column names {_short(header)}; "
                             + repair_hint(path.parent))
    return header


def parse_history(text: str, path: Path) -> tuple[pd.DataFrame, list[str]]:
    """Parse history CSV text; malformed rows (a torn last row, values out of range) are dropped and reported.

    Returns (frame sorted by mini_epoch with one row per mini_epoch, problems). A damaged
    header raises RunError.
    """
    problems: list[str] = []
    lines = text.splitlines()
    if not lines:
        return pd.DataFrame(columns=list(HISTORY_COLUMNS)), problems
    header = parse_header(lines[0], path)
    torn_tail = not text.endswith("\n")
    rows: list[dict[str, float]] = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = next(csv.reader([line]), [])
        last = i == len(lines)
        try:
            if len(fields) != len(header):
                raise ValueError(f"{len(fields)} fields, expected {len(header)}")
            row = {k: _num(v) for k, v in zip(header, fields)}
            _check_row(row)
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
