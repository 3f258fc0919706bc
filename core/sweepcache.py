"""On-disk cache of sweep tables: Parquet segments of many checkpoints, one JSON stamp per checkpoint."""
from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.atomic import atomic_write_bytes

#: A table as named numpy columns of equal length; categorical columns hold int32 codes.
Columns = dict[str, np.ndarray]
#: Per table, its categorical columns and their categories (codes index into these).
Categories = Mapping[str, Mapping[str, Sequence[str]]]
#: Buffered work older than this is written out: an interrupted sweep loses at most this much.
FLUSH_SECONDS = 1.0
#: Unreferenced segments younger than this are left alone (another process may still be reading them).
GC_AFTER_SECONDS = 120.0


class CacheMiss(Exception):
    """A cached part is missing or unreadable: recompute it (the cache is derived data)."""


@dataclass
class Part:
    """One checkpoint's rows of some tables, waiting to be written (``tables``: name -> Columns, or a Future)."""

    mini_epoch: int
    prefix: str  # "me" (activation tables) or "w" (weight tables)
    identity: list
    tables: Any


def has_rows(cols: Columns) -> bool:
    return bool(cols) and len(next(iter(cols.values()))) > 0


def concat_columns(parts: Sequence[Columns]) -> Columns:
    """Row-wise concatenation of tables with the same columns (empty tables are skipped; one table: no copy)."""
    parts = [p for p in parts if has_rows(p)]
    if not parts:
        return {}
    if len(parts) == 1:
        return dict(parts[0])
    keys = list(parts[0])
    if any(list(p) != keys for p in parts[1:]):
        raise ValueError(f"tables with different columns cannot be stacked: {[list(p) for p in parts]}")
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def rows_to_columns(rows: Sequence[Mapping]) -> Columns:
    """Row dicts (same keys) -> Columns; strings become object arrays, numbers numpy arrays."""
    if not rows:
        return {}
    out = {}
    for k in rows[0]:
        vals = [r[k] for r in rows]
        out[k] = np.array(vals, dtype=object) if isinstance(vals[0], str) else np.asarray(vals)
    return out


def to_frame(cols: Columns, cats: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Columns -> DataFrame; categorical columns (codes) become ``pd.Categorical``."""
    if not cols:
        return pd.DataFrame()
    data = {}
    for k, v in cols.items():
        data[k] = pd.Categorical.from_codes(v, categories=list(cats[k])) if k in cats else v
    return pd.DataFrame(data, copy=False)


def _arrow(cols: Columns, cats: Mapping[str, Sequence[str]]) -> pa.Table:
    arrays = {}
    for k, v in cols.items():
        if k in cats:
            arrays[k] = pa.DictionaryArray.from_arrays(pa.array(v.astype(np.int32, copy=False)),
                                                       pa.array(list(cats[k]), pa.string()))
        elif v.dtype == object:
            arrays[k] = pa.array(v.tolist(), pa.string())
        else:
            arrays[k] = pa.array(v)
    return pa.table(arrays)


def _write_options(cols: Columns, cats: Mapping[str, Sequence[str]]) -> dict:
    """Parquet options: only name columns are dictionary-encoded.

    pyarrow's default of dictionary-encoding every column makes float statistics
    several times slower to write and no smaller.
    """
    enc = [k for k in cols if k in cats]
    return {"compression": "snappy", "use_dictionary": enc or False, "write_statistics": False}


def write_parquet(path: Path, parts: Sequence[Columns], cats: Mapping[str, Sequence[str]]) -> None:
    """Atomically write tables with the same columns as one Parquet file, one row group each.

    Row groups instead of one concatenated table: no copy of the rows before encoding.
    """
    parts = [p for p in parts if has_rows(p)]
    tables = [_arrow(p, cats) for p in parts]
    if any(t.schema != tables[0].schema for t in tables[1:]):  # e.g. an int column that became float
        tables = [_arrow(concat_columns([{k: v.astype(np.result_type(*[q[k] for q in parts])) for k, v in p.items()}
                                         for p in parts]), cats)]
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with pq.ParquetWriter(tmp, tables[0].schema, **_write_options(parts[0], cats)) as w:
            for t in tables:
                w.write_table(t, row_group_size=max(1, t.num_rows))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _from_arrow(t: pa.Table, cats: Mapping[str, Sequence[str]]) -> Columns:
    """Parquet table -> Columns, categorical columns mapped onto ``cats`` codes; CacheMiss if they do not fit."""
    out = {}
    for name in t.column_names:
        col = t.column(name)
        if name in cats:
            names = list(cats[name])
            index = {v: i for i, v in enumerate(names)}
            pieces = []
            for chunk in col.chunks:
                if pa.types.is_dictionary(chunk.type):
                    idx = chunk.indices.to_numpy(zero_copy_only=False)
                    d = chunk.dictionary.to_pylist()
                    remap = np.array([index.get(v, -1) for v in d], np.int32) if d != names else None
                    codes = idx.astype(np.int32) if remap is None else remap[idx]
                else:
                    codes = np.array([index.get(v, -1) for v in chunk.to_pylist()], np.int32)
                pieces.append(codes)
            codes = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
            if (codes < 0).any():
                raise CacheMiss(f"column {name!r} holds names this sweep does not know")
            out[name] = codes
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            out[name] = np.array(col.to_pylist(), dtype=object)
        else:
            out[name] = col.to_numpy()
    return out


@dataclass
class SegmentCache:
    """The cache folder of one sweep key.

    Work is buffered and written as a *segment*: one Parquet file per table holding the
    rows of every buffered checkpoint (``seg-<id>.<table>.parquet``), then one stamp per
    checkpoint (``me_000012.json`` for activation tables, ``w_000012.json`` for weight
    tables) naming its identity and segment. Stamps are written last, so a stamp always
    points at complete files; a checkpoint whose file changed gets a new segment and
    its old rows are ignored (and garbage-collected). Few files per sweep instead of ten
    per checkpoint: writing and reading a 200-checkpoint sweep touches a handful of files.
    """

    root: Path
    cats: Categories
    pending: list[Part] = field(default_factory=list)
    last_flush: float = field(default_factory=time.monotonic)
    _loaded: dict[str, dict[str, tuple[Columns, dict[int, slice]]]] = field(default_factory=dict)

    def _stamp_path(self, prefix: str, me: int) -> Path:
        return self.root / f"{prefix}_{me:06d}.json"

    def stamp(self, prefix: str, me: int) -> dict | None:
        try:
            d = json.loads(self._stamp_path(prefix, me).read_text())
            return d if isinstance(d, dict) and "identity" in d and "segment" in d else None
        except (OSError, ValueError):
            return None

    def valid(self, prefix: str, me: int, identity: list) -> dict | None:
        """The stamp of checkpoint ``me`` if it was computed from a file with ``identity``."""
        d = self.stamp(prefix, me)
        return d if d is not None and d["identity"] == identity else None

    def read(self, stamp: dict, me: int) -> dict[str, Columns]:
        """The rows of checkpoint ``me`` in every table its stamp lists; CacheMiss if any file is gone or bad."""
        out = {}
        for table in stamp.get("tables", []):
            cols, bounds = self._segment_table(str(stamp["segment"]), table)
            sl = bounds.get(me)
            if sl is None:
                raise CacheMiss(f"segment {stamp['segment']} has no rows of mini-epoch {me} in {table}")
            out[table] = {k: v[sl] for k, v in cols.items()}
        return out

    def _segment_table(self, seg: str, table: str) -> tuple[Columns, dict[int, slice]]:
        got = self._loaded.setdefault(seg, {})
        if table not in got:
            path = self.root / f"{seg}.{table}.parquet"
            try:
                cols = _from_arrow(pq.read_table(path), self.cats.get(table, {}))
            except CacheMiss:
                raise
            except Exception as e:  # missing, truncated or foreign: derived data, so recompute
                raise CacheMiss(f"{path.name}: {type(e).__name__}") from None
            me = cols.get("mini_epoch")
            if me is None or len(me) == 0:
                raise CacheMiss(f"{path.name}: no mini_epoch column")
            # rows are written checkpoint by checkpoint: find each checkpoint's run of rows
            starts = np.flatnonzero(np.r_[True, me[1:] != me[:-1]])
            ends = np.r_[starts[1:], len(me)]
            got[table] = (cols, {int(me[s]): slice(int(s), int(e)) for s, e in zip(starts, ends)})
        return got[table]

    def add(self, part: Part) -> None:
        self.pending.append(part)

    def due(self) -> bool:
        return bool(self.pending) and time.monotonic() - self.last_flush >= FLUSH_SECONDS

    def take(self) -> list[Part]:
        """The buffered parts (now owned by the caller, who passes them to ``write``)."""
        self.last_flush = time.monotonic()
        parts, self.pending = self.pending, []
        return parts

    def write(self, parts: Sequence[Part]) -> dict[str, list[Columns]]:
        """Write ``parts`` as one segment, then their stamps; returns each table's rows, part by part.

        A part's ``tables`` may be a ``concurrent.futures.Future`` of them (computed in the
        same worker thread before this runs). Safe to run in a worker thread.
        """
        resolved = [(p, p.tables.result() if hasattr(p.tables, "result") else p.tables) for p in parts]
        out: dict[str, list[Columns]] = {}
        for _, tabs in resolved:
            for t, c in tabs.items():
                if has_rows(c):
                    out.setdefault(t, []).append(c)
        if not resolved:
            return out
        self.root.mkdir(parents=True, exist_ok=True)
        seg = f"seg-{time.time_ns():x}-{secrets.token_hex(3)}"
        for table, cols in out.items():
            write_parquet(self.root / f"{seg}.{table}.parquet", cols, self.cats.get(table, {}))
        for p, tabs in resolved:
            stamp = {"identity": p.identity, "segment": seg,
                     "tables": sorted(t for t, c in tabs.items() if has_rows(c))}
            atomic_write_bytes(self._stamp_path(p.prefix, p.mini_epoch), json.dumps(stamp).encode(), fsync=False)
        return out

    def collect_garbage(self) -> None:
        """Delete segment files no stamp points at (older than ``GC_AFTER_SECONDS``)."""
        if not self.root.is_dir():
            return
        live = set()
        for p in self.root.glob("*_*.json"):
            try:
                live.add(str(json.loads(p.read_text())["segment"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        now = time.time()
        # ".*.tmp": temporary files of a process killed while writing
        for p in [*self.root.glob("seg-*.parquet"), *self.root.glob(".*.tmp")]:
            if p.name.split(".", 1)[0] in live:
                continue
            try:
                if now - p.stat().st_mtime > GC_AFTER_SECONDS:
                    os.unlink(p)
            except OSError:
                continue

    def release(self) -> None:
        """Forget segments read so far (their rows are in the result by now)."""
        self._loaded.clear()
