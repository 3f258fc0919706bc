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

from core.run.atomic import atomic_write_bytes

#: The sweep's tables (see ``core.analysis.sweep.SweepResult``): activation tables, then weight tables.
TABLES = ("channels", "layers", "gates", "gate_hist", "gate_channels", "bn_batch", "extras", "grads")
WEIGHT_TABLES = ("weights", "batchnorm")
#: A table as named numpy columns of equal length; categorical columns hold int32 codes.
Columns = dict[str, np.ndarray]
#: Per table, its categorical columns and their categories (codes index into these).
Categories = Mapping[str, Mapping[str, Sequence[str]]]
#: A segment is closed (its files moved into place, its stamps written) after this long: an
#: interrupted sweep loses at most this much work.
FLUSH_SECONDS = 1.0
#: Tables with at least this many rows per checkpoint are written as they come, smaller ones per segment.
STREAM_ROWS = 4096
#: Unreferenced segments younger than this are left alone (another process may still be reading them).
GC_AFTER_SECONDS = 120.0


class CacheMiss(Exception):
    """A cached part is missing or unreadable: recompute it (the cache is derived data)."""


@dataclass
class Part:
    """One checkpoint's rows of some tables (``tables``: name -> Columns), to be appended to a segment."""

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


class TableBuffer:
    """Rows of many checkpoints per table, copied into growing arrays as they arrive.

    Filling the result as each checkpoint finishes (in the sweep's worker thread, while
    the next forward pass runs) instead of concatenating everything at the end. A table
    whose columns change between parts is kept as a list of parts (``parts``).
    """

    def __init__(self, expected_parts: int):
        self.expected = max(1, expected_parts)
        self._cols: dict[str, Columns] = {}
        self._n: dict[str, int] = {}
        self._ragged: dict[str, list[Columns]] = {}

    def add(self, table: str, cols: Columns) -> None:
        if not has_rows(cols):
            return
        if table in self._ragged:
            self._ragged[table].append(cols)
            return
        rows = len(next(iter(cols.values())))
        buf = self._cols.get(table)
        if buf is None:  # room for every expected part: np.empty pages cost memory only once written
            buf = self._cols[table] = {k: np.empty(rows * self.expected, v.dtype) for k, v in cols.items()}
            self._n[table] = 0
        elif list(buf) != list(cols):
            self._ragged[table] = [self.columns(table), cols]
            del self._cols[table], self._n[table]
            return
        n, end = self._n[table], self._n[table] + rows
        for k, v in cols.items():
            b = buf[k]
            dtype = np.promote_types(b.dtype, v.dtype)
            if end > len(b) or dtype != b.dtype:
                grown = np.empty(max(end, 2 * len(b)), dtype)
                grown[:n] = b[:n]
                b = buf[k] = grown
            b[n:end] = v
        self._n[table] = end

    def columns(self, table: str) -> Columns:
        """All rows of ``table`` so far (views, no copy); {} if none or ragged."""
        n = self._n.get(table, 0)
        return {k: v[:n] for k, v in self._cols.get(table, {}).items()} if n else {}

    def parts(self, table: str) -> list[Columns]:
        """``table`` as a list of Columns: one for a regular table, one per part for a ragged one."""
        return self._ragged.get(table) or [c for c in [self.columns(table)] if c]


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


class _OpenSegment:
    """A segment being written: its tables' temporary files, schemas, and the stamps to write when closed.

    A table whose first part has at least ``STREAM_ROWS`` rows is streamed to its file,
    one row group per part; smaller tables are kept and written as one row group on
    closing (a row group per checkpoint of a 10-row table costs more than its rows).
    """

    def __init__(self, root: Path, name: str):
        self.root, self.name = root, name
        self.schemas: dict[str, pa.Schema] = {}
        self.options: dict[str, dict] = {}
        self.tmp: dict[str, Path] = {}
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.held: dict[str, list[pa.Table]] = {}
        self.stamps: list[tuple[str, int, list, list[str]]] = []

    def fit(self, tabs: Mapping[str, pa.Table]) -> dict[str, pa.Table] | None:
        """``tabs`` cast to the segment's schemas, or None if some table cannot be (lossless casts only)."""
        out = {}
        for table, t in tabs.items():
            schema = self.schemas.get(table, t.schema)
            if t.schema != schema:
                try:
                    t = t.cast(schema)
                except (pa.ArrowException, ValueError, TypeError):
                    return None
            out[table] = t
        return out

    def write(self, table: str, t: pa.Table, options: Mapping[str, Any]) -> None:
        if table not in self.schemas:
            self.schemas[table], self.options[table] = t.schema, dict(options)
            self.tmp[table] = self.root / f".{self.name}.{table}.{secrets.token_hex(4)}.tmp"
            if t.num_rows >= STREAM_ROWS:
                self.writers[table] = pq.ParquetWriter(self.tmp[table], t.schema, **options)
            else:
                self.held[table] = []
        if table in self.writers:
            self.writers[table].write_table(t, row_group_size=max(1, t.num_rows))
        else:
            self.held[table].append(t)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        for table, parts in self.held.items():
            t = pa.concat_tables(parts)
            pq.write_table(t, self.tmp[table], row_group_size=max(1, t.num_rows), **self.options[table])
        for table, tmp in self.tmp.items():
            os.replace(tmp, self.root / f"{self.name}.{table}.parquet")

    def discard(self) -> None:
        for writer in self.writers.values():
            try:
                writer.close()
            except Exception:  # already failing (e.g. disk full): only the clean-up matters
                pass
        for tmp in self.tmp.values():
            tmp.unlink(missing_ok=True)
        self.writers.clear()
        self.held.clear()


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
    _loaded: dict[str, dict[str, tuple[Columns, dict[int, slice]]]] = field(default_factory=dict)
    _bounds: dict[tuple[str, str], dict[int, slice]] = field(default_factory=dict)
    _open: _OpenSegment | None = None

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

    def check(self, prefix: str, me: int, identity: list) -> dict | None:
        """The stamp of checkpoint ``me`` if it is valid and its segment files hold its rows.

        Only each file's footer and ``mini_epoch`` column are read (memory does not grow with
        the checkpoints checked): a missing or truncated file makes the checkpoint a miss.
        """
        stamp = self.valid(prefix, me, identity)
        if stamp is None:
            return None
        for table in stamp.get("tables", []):
            key = (str(stamp["segment"]), str(table))
            if key not in self._bounds:
                path = self.root / f"{key[0]}.{key[1]}.parquet"
                try:
                    self._bounds[key] = _row_runs(pq.read_table(path, columns=["mini_epoch"]).column(0).to_numpy())
                except Exception:  # missing, truncated or foreign: derived data, so recompute
                    self._bounds[key] = {}
            if me not in self._bounds[key]:
                return None
        return stamp

    def rows(self, stamp: dict, me: int, table: str) -> Columns | None:
        """Checkpoint ``me``'s rows of ``table`` (None if its stamp lists no such table); CacheMiss if unreadable.

        Only the most recently read segment is kept in memory.
        """
        if table not in stamp.get("tables", []):
            return None
        seg = str(stamp["segment"])
        if seg not in self._loaded:
            self._loaded.clear()
        cols, bounds = self._segment_table(seg, table)
        sl = bounds.get(me)
        if sl is None:
            raise CacheMiss(f"segment {seg} has no rows of mini-epoch {me} in {table}")
        return {k: v[sl] for k, v in cols.items()}

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
            got[table] = (cols, _row_runs(me))
        return got[table]

    def append(self, part: Part) -> None:
        """Append one checkpoint's tables to the open segment (one row group per table), opening one if needed.

        Rows are encoded and written as they come, so closing a segment costs only its
        footer. A part whose columns do not fit the open segment's files (a column that
        changed type or name) closes the segment and starts the next one.
        """
        tabs = {t: _arrow(c, self.cats.get(t, {})) for t, c in part.tables.items() if has_rows(c)}
        seg = self._open
        if seg is not None:
            fitted = seg.fit(tabs)
            if fitted is None:
                self.finish()
                seg = None
            else:
                tabs = fitted
        if seg is None:
            self.root.mkdir(parents=True, exist_ok=True)
            seg = self._open = _OpenSegment(self.root, f"seg-{time.time_ns():x}-{secrets.token_hex(3)}")
        try:
            for table, t in tabs.items():
                seg.write(table, t, _write_options(part.tables[table], self.cats.get(table, {})))
        except BaseException:
            self.abort()
            raise
        seg.stamps.append((part.prefix, part.mini_epoch, part.identity, sorted(tabs)))

    def finish(self) -> None:
        """Close the open segment's files, move them into place, then write their checkpoints' stamps."""
        seg, self._open = self._open, None
        if seg is None:
            return
        try:
            seg.close()
        except BaseException:
            seg.discard()
            raise
        for prefix, me, identity, tables in seg.stamps:
            stamp = {"identity": identity, "segment": seg.name, "tables": tables}
            atomic_write_bytes(self._stamp_path(prefix, me), json.dumps(stamp).encode(), fsync=False)

    def abort(self) -> None:
        """Drop the open segment: its temporary files are deleted and no stamp points at it."""
        seg, self._open = self._open, None
        if seg is not None:
            seg.discard()

    def write(self, parts: Sequence[Part]) -> None:
        """Write ``parts`` as (at least) one finished segment, then their stamps."""
        for p in parts:
            self.append(p)
        self.finish()

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
        self._bounds.clear()


def _row_runs(me: np.ndarray) -> dict[int, slice]:
    """Rows are written checkpoint by checkpoint: each checkpoint's run of rows in a segment table."""
    if len(me) == 0:
        return {}
    starts = np.flatnonzero(np.r_[True, me[1:] != me[:-1]])
    ends = np.r_[starts[1:], len(me)]
    return {int(me[s]): slice(int(s), int(e)) for s, e in zip(starts, ends)}
