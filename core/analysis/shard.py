"""Sharded sweeps: split a run's checkpoints over processes or machines, then merge their caches.

A shard is an ordinary sweep of some checkpoints (``sweep(..., mini_epochs=...)``): it writes
its tables into the run's sweep cache, as every sweep does. Its result is then exported as a
*bundle* (the cache stamps of its checkpoints plus the Parquet segments they point at) and
merged into the cache of the run the final sweep reads. The final sweep is the one-process
``sweep``, which finds every checkpoint in its cache and only reads it back, so its tables are
the one-process tables; it computes what no shard delivered (the update ratio of each shard's
first checkpoint needs the previous checkpoint's weights, and a failed shard). Merging is
idempotent: a shard computed twice (a retried worker) writes the same stamps again, and rows
are taken per checkpoint from the stamp, never appended twice.

Ray (``sweep_on_ray``) and batch schedulers (``--shard i/n`` + ``--merge``) both go through
bundles; see docs/distributed.md.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from core.analysis.sweep import SweepOptions, SweepResult, cache_key, sweep
from core.engine.engine import ProbeSet, RunEngine
from core.run.atomic import atomic_write_bytes
from core.run.runs import Checkpoint, Run, RunError

BUNDLE_FORMAT = "activation-dynamics-sweep-shard"
_SHARD_RE = re.compile(r"^(\d+)/(\d+)$")
_STAMP_RE = re.compile(r"^(me|w)_(\d{6,})\.json$")
_SEG_RE = re.compile(r"^seg-[0-9a-f]+-[0-9a-f]+\.[a-z_]+\.parquet$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``: a contiguous range of the run's checkpoints."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        m = _SHARD_RE.match(text.strip())
        if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
            raise ValueError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4 "
                             "(Slurm: $SLURM_ARRAY_TASK_ID/N; Kubernetes: $JOB_COMPLETION_INDEX/N)")
        return cls(int(m.group(1)), int(m.group(2)))

    def pick(self, mini_epochs: Sequence[int]) -> list[int]:
        """This shard's share of ``mini_epochs``: contiguous, so only its first checkpoint lacks a predecessor."""
        n = len(mini_epochs)
        lo, hi = n * self.index // self.count, n * (self.index + 1) // self.count
        return list(mini_epochs[lo:hi])


def chunks(mini_epochs: Sequence[int], pieces: int) -> list[list[int]]:
    """``mini_epochs`` in ``pieces`` contiguous, near-equal, non-empty parts."""
    pieces = max(1, min(pieces, len(mini_epochs)))
    return [p for p in (Shard(i, pieces).pick(mini_epochs) for i in range(pieces)) if p]


@dataclass
class Bundle:
    """One shard's cache: stamps by file name, segment files by name (bytes, or absent when shared)."""

    key: str
    sizes: dict[int, int]  # mini-epoch -> checkpoint size the shard read (checked when merging)
    stamps: dict[str, dict[str, Any]] = field(default_factory=dict)
    segments: dict[str, bytes] = field(default_factory=dict)
    source: str = ""  # the cache folder the shard wrote (a merge into the same folder copies nothing)

    def write(self, folder: Path) -> None:
        """Write the bundle as a folder (``--shard ... --out``): segments, stamps, then bundle.json."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.segments.items():
            atomic_write_bytes(folder / name, data, fsync=False)
        meta = {"format": BUNDLE_FORMAT, "key": self.key, "sizes": {str(k): v for k, v in self.sizes.items()},
                "stamps": self.stamps, "source": self.source}
        atomic_write_bytes(folder / "bundle.json", json.dumps(meta).encode())

    @classmethod
    def read(cls, folder: Path) -> "Bundle":
        try:
            meta = json.loads((folder / "bundle.json").read_text())
        except FileNotFoundError:
            raise RunError(folder, "no bundle.json: not a finished shard (is its job still running?)") from None
        except ValueError as e:
            raise RunError(folder / "bundle.json", f"not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
            raise RunError(folder / "bundle.json", "not a sweep shard bundle")
        segs = {}
        for name in _segment_names(meta["stamps"]):
            try:
                segs[name] = (folder / name).read_bytes()
            except OSError as e:
                raise RunError(folder / name, f"segment missing from the shard ({e.strerror}); run the shard again")
        return cls(meta["key"], {int(k): int(v) for k, v in meta["sizes"].items()}, meta["stamps"], segs)


def _segment_names(stamps: dict[str, dict[str, Any]]) -> set[str]:
    return {f"{s['segment']}.{t}.parquet" for s in stamps.values() for t in s.get("tables", [])}


def sweep_key(run: Run, engine: RunEngine, probes: ProbeSet, options: SweepOptions) -> str:
    return cache_key(probes, run.manifest.preprocessing, engine.taps, options)


def export_bundle(run: Run, key: str, mini_epochs: Sequence[int], with_files: bool = True) -> Bundle:
    """The cache entries of ``mini_epochs`` (after a sweep of them) as a Bundle."""
    folder = run.cache_dir / key
    sizes = {c.mini_epoch: c.size for c in run.checkpoints() if c.mini_epoch in set(mini_epochs)}
    bundle = Bundle(key, sizes, source=str(folder.resolve()))
    for me in mini_epochs:
        for prefix in ("me", "w"):
            name = f"{prefix}_{me:06d}.json"
            try:
                stamp = json.loads((folder / name).read_text())
            except (OSError, ValueError):
                continue  # not computed (unreadable checkpoint): the final sweep reports it
            bundle.stamps[name] = stamp
    if with_files:
        for name in _segment_names(bundle.stamps):
            bundle.segments[name] = (folder / name).read_bytes()
    return bundle


def merge_bundle(run: Run, key: str, bundle: Bundle) -> int:
    """Add a shard's cache entries to ``run``'s cache for ``key``; returns how many stamps were taken.

    Checkpoint identities are rewritten to this run's files (the shard may have read another
    copy, e.g. its own mirror of an object store); an entry whose checkpoint size differs, or
    that names a checkpoint this run does not have, is skipped and recomputed by the final sweep.
    """
    if bundle.key != key:
        raise RunError(run.path, f"shard computed sweep {bundle.key}, this sweep is {key}: run the shards with "
                                 "the same probe images, options and taps")
    folder = run.cache_dir / key
    folder.mkdir(parents=True, exist_ok=True)
    same = bundle.source == str(folder.resolve())
    ckpts = run.checkpoints()
    ident = {c.mini_epoch: _identity(c) for c in ckpts}
    prev = {c.mini_epoch: _identity(p) for p, c in zip(ckpts, ckpts[1:])}
    sizes = {c.mini_epoch: c.size for c in ckpts}
    for name, data in bundle.segments.items():
        if not _SEG_RE.match(name):
            raise RunError(name, "unexpected file name in a shard bundle; refused")
        if not same and not (folder / name).exists():
            atomic_write_bytes(folder / name, data, fsync=False)
    taken = 0
    for name, stamp in bundle.stamps.items():
        m = _STAMP_RE.match(name)
        if not m:
            continue
        prefix, me = m.group(1), int(m.group(2))
        if me not in ident or bundle.sizes.get(me) != sizes[me]:
            continue
        if prefix == "me":
            new_ident = ident[me]
        else:  # [this checkpoint, its predecessor or None]: None marks a shard's first checkpoint
            new_ident = [ident[me], prev.get(me) if stamp["identity"][1] is not None else None]
        new = {**stamp, "identity": new_ident}
        if not same or new != stamp:
            atomic_write_bytes(folder / name, json.dumps(new).encode(), fsync=False)
        taken += 1
    return taken


def _identity(c: Checkpoint) -> list:
    return [str(c.path), c.size, c.mtime_ns]


def sweep_shard(run: Run, shard: Shard, probes: ProbeSet, options: SweepOptions, engine: RunEngine | None = None,
                progress=None) -> tuple[SweepResult, Bundle]:
    """Sweep shard ``shard`` of ``run``'s checkpoints; returns its result and its bundle."""
    engine = engine or RunEngine(run)
    mine = shard.pick([c.mini_epoch for c in run.checkpoints()])
    res = sweep(run, probes, engine=engine, options=options, mini_epochs=mine, progress=progress)
    return res, export_bundle(run, sweep_key(run, engine, probes, options), mine)


def merge_folders(run: Run, folders: Sequence[Path], probes: ProbeSet, options: SweepOptions,
                  engine: RunEngine | None = None) -> tuple[int, RunEngine]:
    """Merge shard folders (``--shard ... --out``) into ``run``'s cache; returns (stamps taken, engine)."""
    engine = engine or RunEngine(run)
    key = sweep_key(run, engine, probes, options)
    return sum(merge_bundle(run, key, Bundle.read(Path(f))) for f in folders), engine


def default_pieces(workers: int, n: int) -> int:
    """Tasks for ``workers`` workers: two per worker, so a retried task costs half a worker's share."""
    return max(1, min(n, 2 * workers, math.ceil(n / 2)))
