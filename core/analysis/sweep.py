"""Sweep: every checkpoint x every tap x a probe set -> tidy tables, streamed and cached as Parquet.

Memory is flat in the number of checkpoints: each checkpoint's tables go to the run's cache
as soon as they are computed and the result reads a table back from there when it is first
asked for (``SweepResult.tables``); a cached checkpoint is checked, not read. Only when the
cache cannot be written are tables kept in memory.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from core.analysis import sweepcache
from core.analysis.sweepcache import CacheMiss, Columns, Part, SegmentCache, TableBuffer, concat_columns, to_frame
from core.analysis.sweeptables import (  # noqa: F401 - re-exported: the sweep's public names
    LOGIT_BINS, PROBE_BATCH, TABLES, WEIGHT_TABLES, SweepOptions, _Tables, _WeightChain, batch_mean_var,
    output_tap, raw_taps, to_moments,
)
from core.engine.engine import ProbeSet, RunEngine, run_probe_set
from core.run.runs import Checkpoint, Run, RunError

#: Bump when the tables' content changes: old caches are then ignored.
SWEEP_VERSION = 4

Progress = Callable[[int, int, str], None]


#: Tables read back from sweep caches, shared by every result in this process, evicted least
#: recently used first beyond this many bytes (``$ADE_TABLE_CACHE_MB``).
TABLE_CACHE_BYTES = int(float(os.environ.get("ADE_TABLE_CACHE_MB", "768")) * 2 ** 20)


class _TableLRU:
    """Process-wide, size-limited cache of tables read back from sweep caches (thread-safe)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, tuple[pd.DataFrame, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> pd.DataFrame | None:
        with self._lock:
            got = self._items.get(key)
            if got is None:
                return None
            self._items.move_to_end(key)
            return got[0]

    def put(self, key: tuple, df: pd.DataFrame) -> None:
        size = int(df.memory_usage(index=True, deep=False).sum())
        with self._lock:
            if key in self._items or size > self.max_bytes:
                return
            self._items[key] = (df, size)
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, old) = self._items.popitem(last=False)
                self._bytes -= old

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


_LRU = _TableLRU(TABLE_CACHE_BYTES)


@dataclass(frozen=True)
class _Recompute:
    """Sweeps again without reading the cache (when its rows vanished after the sweep); picklable."""

    run_path: str
    probes: ProbeSet
    options: SweepOptions
    taps: tuple[str, ...]
    mini_epochs: tuple[int, ...] | None

    def __call__(self) -> "SweepResult":
        return sweep(Run(self.run_path), self.probes, taps=list(self.taps), options=self.options,
                     mini_epochs=self.mini_epochs, use_cache=False)


@dataclass
class _Entry:
    """One checkpoint's tables of one kind ("me" activation, "w" weight): in the cache, or held (``tables``)."""

    prefix: str
    mini_epoch: int
    identity: list
    tables: dict[str, Columns] | None = None


@dataclass(frozen=True)
class _Source:
    """Where a finished sweep's tables are: its cache folder and its checkpoints' entries (picklable)."""

    root: Path | None
    cats: Mapping[str, Mapping[str, Sequence[str]]]
    entries: tuple[_Entry, ...]
    recompute: _Recompute
    token: str  # names this content in the shared table cache

    def table(self, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Every checkpoint's rows of table ``name`` (only ``columns``, if given), in sweep order.

        Read back one segment at a time: the memory needed is the result plus one segment.
        """
        prefix = "w" if name in WEIGHT_TABLES else "me"
        entries = [e for e in self.entries if e.prefix == prefix]
        cache = SegmentCache(self.root, self.cats) if self.root is not None else None
        buf = TableBuffer(len(entries))
        try:
            for e in entries:
                cols = e.tables.get(name) if e.tables is not None else _from_cache(cache, e, name)
                if cols and columns is not None:
                    cols = {k: v for k, v in cols.items() if k in columns}
                if cols:
                    buf.add(name, cols)
        except CacheMiss:
            df = self.recompute().tables[name]
            return df if columns is None else df[[c for c in columns if c in df]]
        return _frame(buf.parts(name), self.cats.get(name, {}))


def _from_cache(cache: SegmentCache | None, e: _Entry, name: str) -> Columns | None:
    stamp = cache.valid(e.prefix, e.mini_epoch, e.identity) if cache is not None else None
    if stamp is None:
        raise CacheMiss(f"no stamp for mini-epoch {e.mini_epoch}")
    return cache.rows(stamp, e.mini_epoch, name)


class LazyTables(Mapping[str, pd.DataFrame]):
    """A sweep's tables by name, read from its cache on first access; thread-safe and picklable.

    A table read is kept by this object and in a process-wide cache of ``TABLE_CACHE_BYTES``
    (evicted by use); a pickled copy (``st.cache_data`` makes one per hit) carries only where
    the tables are, never their rows.
    """

    def __init__(self, names: Sequence[str], source: _Source):
        self._names, self._source = tuple(names), source
        self._got: dict[str, pd.DataFrame] = {}
        self._lock = threading.Lock()

    def __getitem__(self, name: str) -> pd.DataFrame:
        if name not in self._names:
            raise KeyError(name)
        with self._lock:
            if name not in self._got:
                key = (self._source.token, name)
                df = _LRU.get(key)
                if df is None:
                    df = self._source.table(name)
                    _LRU.put(key, df)
                self._got[name] = df
            return self._got[name]

    def columns(self, name: str, columns: Sequence[str]) -> pd.DataFrame:
        """Only ``columns`` of table ``name``: reads (and keeps) far less than the whole table."""
        if name not in self._names:
            raise KeyError(name)
        with self._lock:
            if name in self._got:
                df = self._got[name]
                return df[[c for c in columns if c in df]]
        key = (self._source.token, name, tuple(columns))
        df = _LRU.get(key)
        if df is None:
            df = self._source.table(name, columns)
            _LRU.put(key, df)
        return df

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:  # Mapping's default would read the table
        return name in self._names

    def loaded(self) -> tuple[str, ...]:
        """Names of the tables this object holds in full."""
        return tuple(self._got)

    def __getstate__(self) -> dict:
        return {"names": self._names, "source": self._source}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["names"], state["source"])


@dataclass
class SweepResult:
    """Tidy tables of one run's sweep; missing tables are empty DataFrames.

    Tables (one row per ...):
      channels      run, mini_epoch, probe, layer, channel: min, max, mean, std, mean_abs, frac_zero, n_nan, n_inf
      layers        run, mini_epoch, probe, layer (+ depth, kind): the same over the whole layer + frac_dead_channels
      gates         run, mini_epoch, probe, block: frac_low, frac_high, frac_half, mean, std
      gate_hist     run, mini_epoch, block, kind ('gate'|'logits'), bin_left, bin_right, count
      gate_channels run, mini_epoch, probe, block, channel, gate, logit
      bn_batch      run, mini_epoch, layer: mean_shift (|batch mean − moving mean| / sqrt(moving var), channel mean),
                    var_ratio (median batch var / moving var)
      extras        run, mini_epoch: loss, accuracy (inference mode), loss_train_mode, accuracy_train_mode,
                    n_nan_weights, n_inf_weights, n_probes
      grads         run, mini_epoch, layer: grad_norm
      weights       run, mini_epoch, layer, variable: norm, dist_from_init, rel_dist_from_init, update_norm,
                    update_ratio, n_nan, n_inf
      batchnorm     run, mini_epoch, layer: gamma/beta and moving-statistic summaries
    ``probe_ids[i]`` names probe ``i``; ``problems`` lists checkpoints that could not be swept;
    ``swept`` the mini-epochs with activation tables (None: read them from the layers table).
    """

    run: str
    probe_ids: tuple[str, ...]
    tables: Mapping[str, pd.DataFrame] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    layer_order: tuple[str, ...] = ()
    se_blocks: tuple[str, ...] = ()
    swept: tuple[int, ...] | None = None

    def __getattr__(self, name: str) -> pd.DataFrame:
        if name in TABLES or name in WEIGHT_TABLES:
            return self.tables.get(name, pd.DataFrame())
        raise AttributeError(name)

    def table(self, name: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Table ``name`` (empty if absent); with ``columns`` only those are read from the cache."""
        if columns is not None and isinstance(self.tables, LazyTables) and name in self.tables:
            return self.tables.columns(name, columns)
        df = self.tables.get(name, pd.DataFrame())
        return df if columns is None or df.empty else df[[c for c in columns if c in df]]

    @property
    def mini_epochs(self) -> list[int]:
        if self.swept is not None:
            return sorted(self.swept)
        t = self.tables.get("layers")
        return sorted(t["mini_epoch"].unique().tolist()) if t is not None and len(t) else []


def cache_key(probes: ProbeSet, preprocessing: Mapping, taps: Sequence[str], options: SweepOptions) -> str:
    """Folder name of a sweep's cache: probe content, preprocessing, taps, options and version."""
    h = hashlib.sha256(json.dumps({"v": SWEEP_VERSION, "probes": probes.key, "pre": dict(preprocessing),
                                   "taps": list(taps), "opt": [options.train_mode, options.gradients]},
                                  sort_keys=True).encode())
    return f"sweep-{h.hexdigest()[:16]}"


def _identity(c: Checkpoint) -> list:
    return [str(c.path), c.size, c.mtime_ns]


def sweep(run: Run, probes: ProbeSet | None = None, *, taps: Sequence[str] | None = None,
          engine: RunEngine | None = None, options: SweepOptions = SweepOptions(),
          progress: Progress | None = None, stop: threading.Event | None = None,
          mini_epochs: Sequence[int] | None = None, use_cache: bool = True) -> SweepResult:
    """Compute (or find in the run's cache) every table for every checkpoint.

    Streamed checkpoint by checkpoint: only one checkpoint's activations (in forward passes of
    at most ``PROBE_BATCH`` probes), the next checkpoint's weights (read ahead), the initial
    and the previous weights are in memory. Each checkpoint's tables are written to
    ``run/cache/<key>/`` as soon as they are computed (stamped within about a second), so an
    interrupted sweep (``stop`` set, or a crash) resumes where it stopped; a checkpoint file
    that changed (size or mtime) is recomputed. A checkpoint that cannot be read is reported
    in ``problems`` and skipped. ``progress(done, total, message)`` is called after each checkpoint.
    """
    engine = engine or RunEngine(run, taps)
    probes = probes if probes is not None else run_probe_set(run)
    if len(probes) == 0:
        raise RunError(run.path, "no probe images: pass probe images or record a probe set with the run")
    ckpts = run.checkpoints()
    if mini_epochs is not None:
        wanted = set(mini_epochs)
        ckpts = [c for c in ckpts if c.mini_epoch in wanted]
    job = _Sweep(run, probes, engine, options, ckpts, use_cache)

    again = _Recompute(str(run.path), probes, options, tuple(engine.taps),
                       None if mini_epochs is None else tuple(mini_epochs))
    return job.execute(progress, stop, again)


class _Sweep:
    """One sweep's state: the table maker, the cache, the worker threads and the weight chain."""

    def __init__(self, run: Run, probes: ProbeSet, engine: RunEngine, options: SweepOptions,
                 ckpts: list[Checkpoint], use_cache: bool):
        self.run, self.probes, self.engine, self.options, self.ckpts = run, probes, engine, options, ckpts
        self.use_cache = use_cache
        self.maker = _Tables(engine, probes, options)
        self.cats = self.maker.categories()
        key = cache_key(probes, run.manifest.preprocessing, engine.taps, options)
        try:
            cache, problem = SegmentCache(run.cache_dir / key, self.cats), ""
        except RunError as e:  # e.g. a `cache` link leaving the run: nothing is written there
            cache, problem = None, f"{e}; the results are kept in memory and computed again next time"
            self.use_cache = False
        self.sink = _Sink(cache, problem)
        self.result = SweepResult(run.name, probes.ids, layer_order=tuple(engine.taps),
                                  se_blocks=tuple(b.name for b in engine.se_blocks))
        self.result.problems.extend(run.problems)
        # One worker thread builds the tables and appends them to the cache, in checkpoint order,
        # while the main thread runs the next forward pass in TensorFlow (which leaves part of a
        # core idle); a second thread reads the next checkpoint's weights meanwhile.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-tables")
        self.reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-read")
        self.ahead: dict[int, Future] = {}
        self.jobs: list[Future] = []
        self.inflight: Future | None = None
        self.chain = _WeightChain(engine, run.checkpoints(), run.name)
        self.prev_identity: list | None = None

    # -- the loop ---------------------------------------------------------------------------
    def execute(self, progress: Progress | None, stop: threading.Event | None,
                again: _Recompute) -> SweepResult:
        last_flush = time.monotonic()
        n = len(self.ckpts)
        try:
            for i, c in enumerate(self.ckpts):
                if stop is not None and stop.is_set():
                    self.result.problems.append("sweep stopped before the end; run it again to continue")
                    break
                msg = self.step(i, c)
                if msg is None:
                    continue
                if time.monotonic() - last_flush >= sweepcache.FLUSH_SECONDS:
                    self.pool.submit(self.sink.flush)
                    last_flush = time.monotonic()
                if progress:
                    progress(i + 1, n, msg)
        finally:
            self.reader.shutdown(wait=True, cancel_futures=True)
            self.pool.submit(self.sink.flush)  # also when interrupted by an exception: finished checkpoints are kept
            self.pool.shutdown(wait=True)
        for job in self.jobs:
            job.result()  # an error in the worker is raised here
        if self.sink.problem:
            self.result.problems.append(self.sink.problem)
        cache = self.sink.cache
        if cache is not None:
            cache.release()
            cache.collect_garbage()
        entries = tuple(self.sink.entries)
        self.result.swept = tuple(e.mini_epoch for e in entries if e.prefix == "me")
        token = (hashlib.sha256(json.dumps([str(cache.root), [[e.prefix, e.mini_epoch, e.identity] for e in entries]])
                                .encode()).hexdigest() if cache is not None and all(e.tables is None for e in entries)
                 else uuid.uuid4().hex)  # tables held in memory: this result's own
        source = _Source(cache.root if cache is not None else None, self.cats, entries, again, token)
        self.result.tables = LazyTables((*TABLES, *WEIGHT_TABLES), source)
        return self.result

    def step(self, i: int, c: Checkpoint) -> str | None:
        """Sweep checkpoint ``i``; the progress message, or None when it was skipped (reported)."""
        me, ident = c.mini_epoch, _identity(c)
        w_ident = [ident, self.prev_identity]
        cache = self.sink.cache
        act_ok = self.use_cache and cache is not None and cache.check("me", me, ident) is not None
        w_ok = not self.options.weights or (self.use_cache and cache is not None
                                            and cache.check("w", me, w_ident) is not None)
        if act_ok:
            self.jobs.append(self.pool.submit(self.sink.cached, "me", me, ident))
        if w_ok and self.options.weights:
            self.jobs.append(self.pool.submit(self.sink.cached, "w", me, w_ident))
        if act_ok and w_ok:
            self.pool.submit(self.chain.reset)  # weights not loaded: the next checkpoint must read its predecessor's
            self.prev_identity = ident
            return f"mini-epoch {me} (cached)"
        fut = self.ahead.pop(i, None) or self.first_read(c, act_ok)
        self.read_ahead(i + 1)
        try:
            weights, wv = fut.result()
            if not act_ok and isinstance(wv, ValueError):
                raise RunError(c.path, str(wv))
        except Exception as e:  # noqa: BLE001 - a checkpoint that does not load: report, keep going
            self.result.problems.append(str(e) if isinstance(e, RunError)
                                        else f"{c.path}: could not be read ({type(e).__name__}: {e})")
            self.pool.submit(self.chain.reset)
            self.prev_identity = None
            return None
        if self.options.weights:  # in the worker (it holds the first and the previous weights), during the forward pass
            self.jobs.append(self.pool.submit(self.weight_job, c, weights, self.prev_identity is not None,
                                              None if w_ok else w_ident))
        if not act_ok:
            red, acts, redo = self.maker.forward(wv)
            if self.inflight is not None:  # one checkpoint's tables in flight: memory stays flat
                self.inflight.result()
            self.inflight = self.pool.submit(self.activation_job, me, ident, red, acts, redo, weights, wv)
            self.jobs.append(self.inflight)
            del red, acts, redo
        self.prev_identity = ident
        return f"mini-epoch {me}"

    def first_read(self, c: Checkpoint, act_ok: bool) -> Future:
        """Start reading ``c`` (not read ahead); trace the forward pass while a quick read runs. A Keras
        load holds the interpreter as tracing does: then trace first, and set the graph up meanwhile."""
        ex, raw = self.engine.extractor, self.maker.raw
        quick = act_ok or ex.reduced_traced(raw) or self.engine.reads_quickly(c)
        if not quick:
            ex.prepare_reduced(raw)
        fut = self.reader.submit(self.load, c)
        if quick and not act_ok:
            ex.prepare_reduced(raw)
        elif not quick:
            ex.warm_reduced(raw, batch=min(len(self.probes), PROBE_BATCH))
        return fut

    # -- work items -------------------------------------------------------------------------
    def load(self, c: Checkpoint) -> tuple[dict[str, np.ndarray], object]:
        """(weights, WeightValues or the ValueError saying why they do not fit the model)."""
        weights = self.engine.read_weights(c)
        try:
            return weights, self.engine.weight_values(weights)
        except ValueError as e:
            return weights, e

    def read_ahead(self, j: int) -> None:
        if j >= len(self.ckpts):
            return
        cache = self.sink.cache
        c = self.ckpts[j]
        if not self.use_cache or cache is None or cache.valid("me", c.mini_epoch, _identity(c)) is None:
            self.ahead[j] = self.reader.submit(self.load, c)

    def activation_job(self, me: int, ident: list, red, acts, redo, weights, wv) -> None:
        m = self.maker.moments(red, redo)
        self.sink.store(me, "me", ident, self.maker.tables(me, m, red, acts, weights, wv))

    def weight_job(self, c: Checkpoint, weights, has_prev: bool, ident: list | None) -> None:
        tabs = self.chain.step(c, weights, has_prev, ident is not None)
        if ident is not None:
            self.sink.store(c.mini_epoch, "w", ident, tabs)


class _Sink:
    """The sweep worker's end of the line: each checkpoint's tables go to the cache (or memory).

    Tables stay in memory only until their segment is written (about a second). A cache that
    cannot be written (disk full, read-only folder) is dropped with a problem message and the
    tables are kept in memory from then on: the sweep's result is complete either way.
    """

    def __init__(self, cache: SegmentCache | None, problem: str = ""):
        self.cache = cache
        self.problem = problem
        self.entries: list[_Entry] = []
        self._pending: list[_Entry] = []

    def cached(self, prefix: str, me: int, identity: list) -> None:
        self.entries.append(_Entry(prefix, me, identity))

    def store(self, me: int, prefix: str, identity: list, tables: Mapping[str, Columns]) -> None:
        entry = _Entry(prefix, me, identity, dict(tables))
        self.entries.append(entry)
        if self.cache is None:
            return
        self._pending.append(entry)
        self._guard(lambda cache: cache.append(Part(me, prefix, identity, dict(tables))))

    def flush(self) -> None:
        self._guard(lambda cache: cache.finish())
        if self.cache is not None:
            for e in self._pending:
                e.tables = None  # on disk now: read back on demand
            self._pending.clear()

    def _guard(self, op: Callable[[SegmentCache], None]) -> None:
        if self.cache is None:
            return
        try:
            op(self.cache)
        except OSError as e:
            self.cache.abort()
            self.cache = None
            self._pending.clear()  # their tables stay in memory
            self.problem = (f"could not write the sweep cache in {e.filename or 'the run folder'} ({e.strerror or e}); "
                            "the results are complete but will be computed again next time")


def _frame(parts: list[Columns], cats: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """One DataFrame from per-checkpoint Columns; tables whose columns changed between checkpoints are aligned."""
    try:
        return to_frame(concat_columns(parts), cats)
    except ValueError:  # e.g. a cache written by another version of a small table: align by name
        return pd.concat([to_frame(p, cats) for p in parts if p], ignore_index=True)
