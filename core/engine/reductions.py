"""Per-channel statistics of tapped tensors, reduced inside the traced graph (``Extractor.run_reduced``)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

#: Statistics ``Extractor.run_reduced`` computes in the graph, per probe and channel.
REDUCED_KEYS = ("s", "m2", "abs_sum", "min", "max", "n_zero")


def positions_per_channel(shape: tuple[int | None, ...]) -> int:
    """Positions per (probe, channel) of a tap of shape (None, ..., C); an unknown dimension counts 1
    (``unpack`` gives the positions of such a tap when it has run)."""
    p = 1
    for d in shape[1:-1]:
        p *= int(d) if d is not None else 1
    return p


#: Per-probe size (positions x channels) from which sums run as matrix products: oneDNN's kernels
#: beat TensorFlow's middle-axis sums on large maps and lose on small ones (bench/bench_sweep.py
#: compares the forward time at 224 px and 64 px).
LARGE_TAP = 32768


@dataclass(frozen=True)
class Block:
    """One output of ``reduce_groups``, a group's: taps ``taps`` (rows j*N:(j+1)*N are tap ``taps[j]``'s), for
    each row ``keys`` side by side, ``width`` channels each; ``unpack`` turns the keys into ``REDUCED_KEYS``.

    Keys besides ``REDUCED_KEYS``: ``value`` (a tap with one value per channel: the value gives every
    statistic), ``nonzero`` (n_zero = positions - nonzero) and ``positions`` (positions per channel, for
    a tap whose shape is known only when run).
    """

    taps: tuple[int, ...]
    keys: tuple[str, ...]
    width: int


class Consts:
    """Constants shared by the reductions of one traced graph: every ``tf.constant`` is one more graph op."""

    def __init__(self) -> None:
        self._made: dict[tuple, tf.Tensor] = {}

    def get(self, key: tuple, make: Any) -> tf.Tensor:
        if key not in self._made:
            self._made[key] = tf.constant(make())
        return self._made[key]

    def axis(self, a: int) -> tf.Tensor:
        return self.get(("axis", a), lambda: np.int32(a))

    def ones(self, p: int) -> tf.Tensor:
        return self.get(("ones", p), lambda: np.ones((1, 1, p), np.float32))

    def positions(self, p: int) -> tf.Tensor:
        return self.get(("positions", p), lambda: np.float32(p))


def reduce_tap(t: tf.Tensor, k: Consts | None = None) -> tuple[tuple[str, ...], tf.Tensor]:
    """(N, ..., C) -> (keys, statistics), the statistics laid out as (N, ..., len(keys) * C).

    Assumes finite values (cheap passes, small graph). A NaN or Inf makes the sum
    non-finite; ``Extractor.run_reduced`` callers detect that and recompute the tap
    from raw values with ``core.analysis.stats.moments``, which masks them.
    Every graph op counts: with a hundred taps the ops' count sets the time to trace and
    set up the graph. So static shapes are used where known, constants are shared (``k``),
    and what needs no pass over the tensor (finishing the zero count, squeezing) is left to ``unpack``.
    """
    k = k or Consts()
    t = tf.cast(t, tf.float32)
    dims = t.shape[1:]
    width = int(dims[-1])
    one, last = k.axis(1), k.axis(-1)
    if dims.is_fully_defined():
        p = int(np.prod(dims[:-1], dtype=np.int64))
        if p == 1:  # one value per channel (dense, pooled, SE gates): the statistics are the value
            return ("value",), t
        if p * width >= LARGE_TAP:
            return _reduce_large(t, p, width, k)
        t = tf.reshape(t, (-1, p, width))
        positions: Any = k.positions(p)
    else:
        t = tf.reshape(t, tf.stack([tf.shape(t)[0], -1, width]))
        positions = tf.cast(tf.shape(t)[1], tf.float32)
    total = tf.reduce_sum(t, axis=one, keepdims=True)
    a = tf.abs(t)
    # squared_difference is one fused kernel; sign(|x|) counts non-zeros without a bool tensor
    nonzero = tf.reduce_sum(tf.sign(a), axis=one, keepdims=True)
    stats = [total, tf.reduce_sum(tf.math.squared_difference(t, total / positions), axis=one, keepdims=True),
             tf.reduce_sum(a, axis=one, keepdims=True), tf.reduce_min(t, axis=one, keepdims=True),
             tf.reduce_max(t, axis=one, keepdims=True)]
    if dims.is_fully_defined():
        return ("s", "m2", "abs_sum", "min", "max", "nonzero"), tf.concat([*stats, nonzero], axis=last)
    # positions known only when run: ``unpack`` takes them from here
    return (*REDUCED_KEYS[:5], "nonzero", "positions"), tf.concat([*stats, nonzero, tf.zeros_like(total) + positions],
                                                               axis=last)


def _reduce_large(t: tf.Tensor, p: int, c: int, k: Consts) -> tuple[tuple[str, ...], tf.Tensor]:
    """``reduce_tap`` for a tap with ``p`` positions and ``c`` channels per probe, both static and large:
    sums are a product with a row of ones, (1, 1, P) @ (N, P, C)."""
    t3 = tf.reshape(t, (-1, p, c))
    ones, one = k.ones(p), k.axis(1)
    s = tf.matmul(ones, t3)
    a = tf.abs(t3)
    stats = [s, tf.matmul(ones, tf.math.squared_difference(t3, s / k.positions(p))), tf.matmul(ones, a),
             tf.reduce_min(t3, axis=one, keepdims=True), tf.reduce_max(t3, axis=one, keepdims=True),
             tf.matmul(ones, tf.sign(a))]
    return ("s", "m2", "abs_sum", "min", "max", "nonzero"), tf.concat(stats, axis=k.axis(-1))


#: Per-probe values one group of ``reduce_groups`` holds at most: a group's taps stay in
#: memory until the last of them is computed, so groups are bounded.
GROUP_VALUES = 2 ** 19


def tap_groups(shapes: Sequence[tuple[int | None, ...]]) -> list[list[int]]:
    """Indices of the taps ``reduce_groups`` reduces together, groups in order of their first tap.

    Taps of one static shape share a group while it holds at most ``GROUP_VALUES`` values
    per probe; a tap of a partly unknown shape is a group of its own.
    """
    groups: list[list[int]] = []
    open_group: dict[tuple[int, ...], int] = {}
    size: dict[int, int] = {}
    for i, shape in enumerate(shapes):
        dims = tuple(shape[1:])
        if not dims or None in dims:
            groups.append([i])
            continue
        values = int(np.prod(dims, dtype=np.int64))
        g = open_group.get(dims)
        if g is None or size[g] + values > GROUP_VALUES:
            g = open_group[dims] = len(groups)
            groups.append([])
            size[g] = 0
        groups[g].append(i)
        size[g] += values
    return groups


def reduce_groups(taps: Sequence[tf.Tensor], groups: Sequence[Sequence[int]]) -> tuple[list[tf.Tensor], list[Block]]:
    """``reduce_tap`` of each group's taps stacked along the batch axis -> (statistics, their ``Block``s).

    ``unpack`` reads them. A reduction is a dozen graph ops: taps of one shape share them.
    Stacking along the batch axis copies whole tensors and leaves each (probe, channel)
    row's reduction as it was.
    """
    k = Consts()
    outs: list[tf.Tensor] = []
    blocks: list[Block] = []
    for g in groups:
        ts = [tf.cast(taps[i], tf.float32) for i in g]
        t = ts[0] if len(ts) == 1 else tf.concat(ts, axis=k.axis(0))
        keys, stats = reduce_tap(t, k)
        blocks.append(Block(tuple(g), keys, int(t.shape[-1])))
        outs.append(stats)
    return outs, blocks


def unpack(values: Sequence[np.ndarray], blocks: Sequence[Block], n: int, offsets: np.ndarray, totals: np.ndarray
           ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``reduce_groups``' outputs for ``n`` probes -> ({key: float32 (n, ΣC)} for ``REDUCED_KEYS``, positions per
    channel of each tap), tap i in columns offsets[i]:offsets[i + 1]; ``totals`` are the positions of the
    taps of static shape (``positions_per_channel``), the others' come with their block."""
    out = {k: np.empty((n, int(offsets[-1])), np.float32) for k in REDUCED_KEYS}
    found = np.array(totals, np.int64)
    for b, value in zip(blocks, values, strict=True):
        v = value.reshape(len(b.taps), n, len(b.keys), b.width)
        for j, i in enumerate(b.taps):
            if "positions" in b.keys and n:
                found[i] = int(round(float(v[j, 0, b.keys.index("positions"), 0])))
            cols = slice(int(offsets[i]), int(offsets[i + 1]))
            for ki, key in enumerate(b.keys):
                _put(out, key, cols, v[j, :, ki], found[i])
    found.flags.writeable = False
    return out, found


def _put(out: dict[str, np.ndarray], key: str, cols: slice, v: np.ndarray, positions: int) -> None:
    """Columns ``cols`` of ``out`` from block values ``v`` (n, C) of ``key``, in float32 as the graph would."""
    if key == "value":
        a = np.abs(v)
        for k, val in (("s", v), ("min", v), ("max", v), ("abs_sum", a), ("m2", 0.0),
                       ("n_zero", np.float32(1.0) - np.sign(a))):
            out[k][:, cols] = val
    elif key == "nonzero":
        out["n_zero"][:, cols] = np.float32(positions) - v
    elif key != "positions":
        out[key][:, cols] = v


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous
class Reduced:
    """Per-channel statistics of every tap, stacked along the channel axis (finite tensors only).

    ``arrays[k]`` for k in ``REDUCED_KEYS`` is float32 (N, ΣC); tap ``taps[i]`` owns columns
    ``offsets[i]:offsets[i + 1]`` and has ``totals[i]`` positions per channel.
    """

    taps: tuple[str, ...]
    offsets: np.ndarray  # int64 (T + 1,)
    totals: np.ndarray  # int64 (T,)
    arrays: dict[str, np.ndarray]

    def columns(self, tap: str) -> slice:
        i = self.taps.index(tap)
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))
