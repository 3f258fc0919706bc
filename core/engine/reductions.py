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
    """Positions per (probe, channel) of a tap of shape (None, ..., C)."""
    p = 1
    for d in shape[1:-1]:
        p *= int(d) if d is not None else 1
    return p


#: Per-probe size (positions x channels) from which sums run as matrix products and min/max as
#: pooling: oneDNN's kernels beat TensorFlow's middle-axis reductions on large maps and lose on
#: small ones (bench/bench_sweep.py compares the forward time at 224 px and 64 px).
LARGE_TAP = 32768


def reduce_tap(t: tf.Tensor) -> list[tf.Tensor]:
    """(N, ..., C) -> per (N, C), in ``REDUCED_KEYS`` order: sum, M2, |x| sum, min, max, zeros.

    Assumes finite values (cheap passes, small graph). A NaN or Inf makes the sum
    non-finite; ``Extractor.run_reduced`` callers detect that and recompute the tap
    from raw values with ``core.analysis.stats.moments``, which masks them.
    Static shapes are used where known: every dynamic shape step is several more graph ops,
    and with a hundred taps the ops' count sets the time to trace and optimise the graph.
    """
    t = tf.cast(t, tf.float32)
    dims = t.shape[1:]
    if dims.is_fully_defined() and len(dims) >= 1:
        p, width = int(np.prod(dims[:-1], dtype=np.int64)), int(dims[-1])
        if p == 1:  # one value per channel (dense, pooled, SE gates): the statistics are the value
            v = tf.reshape(t, (-1, width))
            a = tf.abs(v)
            return [v, tf.zeros_like(v), a, v, v, 1.0 - tf.sign(a)]
        if p * width >= LARGE_TAP:
            return _reduce_large(t, p, width)
        t = tf.reshape(t, (-1, p, width))
        positions: Any = float(p)
    else:
        t = tf.reshape(t, tf.stack([tf.shape(t)[0], -1, tf.shape(t)[-1]]))
        positions = tf.cast(tf.shape(t)[1], tf.float32)
    total = tf.reduce_sum(t, axis=1, keepdims=True)
    s = tf.squeeze(total, axis=1)
    a = tf.abs(t)
    # squared_difference is one fused kernel; sign(|x|) counts non-zeros without a bool tensor
    return [s, tf.reduce_sum(tf.math.squared_difference(t, total / positions), axis=1),
            tf.reduce_sum(a, axis=1), tf.reduce_min(t, axis=1), tf.reduce_max(t, axis=1),
            positions - tf.reduce_sum(tf.sign(a), axis=1)]


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


def reduce_groups(taps: Sequence[tf.Tensor], groups: Sequence[Sequence[int]]) -> list[tf.Tensor]:
    """``reduce_tap`` of each group's taps stacked along the batch axis: per group, ``REDUCED_KEYS``
    order, (len(group) * N, C) with tap ``group[j]`` in rows j*N:(j+1)*N (``stack_groups`` reorders).

    A reduction is a dozen graph ops, and with a hundred taps the ops' count sets the time to
    trace and optimise the graph; taps of one shape share them. Stacking along the batch
    axis copies whole tensors and leaves each (probe, channel) row's reduction as it was.
    """
    out: list[tf.Tensor] = []
    for g in groups:
        ts = [tf.cast(taps[i], tf.float32) for i in g]
        out.extend(reduce_tap(ts[0] if len(ts) == 1 else tf.concat(ts, axis=0)))
    return out


def stack_groups(values: Sequence[np.ndarray], groups: Sequence[Sequence[int]], offsets: np.ndarray
                 ) -> dict[str, np.ndarray]:
    """``reduce_groups``' arrays -> {key: float32 (N, ΣC)}, tap i in columns offsets[i]:offsets[i + 1]."""
    n_keys = len(REDUCED_KEYS)
    first = values[0]
    n = first.shape[0] // len(groups[0])
    out = {k: np.empty((n, int(offsets[-1])), np.float32) for k in REDUCED_KEYS}
    for gi, g in enumerate(groups):
        for ki, k in enumerate(REDUCED_KEYS):
            v = values[gi * n_keys + ki]
            for j, i in enumerate(g):
                out[k][:, offsets[i]:offsets[i + 1]] = v[j * n:(j + 1) * n]
    return out


def _reduce_large(t: tf.Tensor, p: int, c: int) -> list[tf.Tensor]:
    """``reduce_tap`` for a tap with ``p`` positions and ``c`` channels per probe, both static and large.

    Sums are a product with a row of ones, (1, 1, P) @ (N, P, C); min and max are one
    max-pooling window over all positions.
    """
    t3 = tf.reshape(t, (-1, p, c))
    t4 = tf.reshape(t, (-1, p, 1, c))
    ones = tf.ones((1, 1, p), tf.float32)

    def total(u: tf.Tensor) -> tf.Tensor:  # (N, 1, C)
        return tf.matmul(ones, u)

    def peak(u: tf.Tensor) -> tf.Tensor:
        return tf.squeeze(tf.nn.max_pool2d(u, (p, 1), (p, 1), "VALID"), axis=(1, 2))

    s = total(t3)
    a = tf.abs(t3)
    sums = [s, total(tf.math.squared_difference(t3, s / p)), total(a), None, None, p - total(tf.sign(a))]
    out = [tf.squeeze(u, axis=1) if u is not None else None for u in sums]
    out[3], out[4] = -peak(-t4), peak(t4)
    return out


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
