"""Activation statistics (per channel, per layer, SE gates, histograms) in pure numpy."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "STAT_NAMES",
    "LAYER_STAT_NAMES",
    "GATE_BINS",
    "Moments",
    "MOMENT_ARRAYS",
    "moments",
    "merge_moments",
    "channel_stats",
    "layer_stats",
    "channel_stats_from_moments",
    "layer_stats_from_moments",
    "stacked_layer_stats",
    "channel_stats_frame",
    "layer_stats_frame",
    "gate_stats",
    "gate_stats_frame",
    "gate_hist_frame",
    "logit_hist",
    "histogram_rows",
    "dead_channel_mask",
    "dead_channels",
    "concat_frames",
]

#: Keys of :func:`channel_stats` (float stats first, then integer counts).
STAT_NAMES: tuple[str, ...] = ("min", "max", "mean", "std", "mean_abs", "frac_zero", "n_nan", "n_inf")
#: Keys of :func:`layer_stats`.
LAYER_STAT_NAMES: tuple[str, ...] = (
    "min", "max", "mean", "std", "mean_abs", "frac_zero", "frac_dead_channels", "n_nan", "n_inf",
)
_COUNT_NAMES = ("n_nan", "n_inf")

#: Fixed histogram edges for SE gates: 20 bins of width 0.05 over [0, 1].
#: Fixed (not data-dependent) so histograms from different checkpoints, probes
#: and blocks can be summed and compared bin by bin; the end bins line up with
#: the default "switched off" (< 0.05) and "pinned open" (> 0.95) thresholds.
#: As in ``np.histogram`` every bin is half-open ``[left, right)`` except the
#: last, which is closed, so a gate of exactly 1.0 lands in the last bin.
GATE_BINS: np.ndarray = np.linspace(0.0, 1.0, 21)
GATE_BINS.flags.writeable = False  # shared by every caller: an in-place edit would skew all histograms

# Elements per block: big enough that per-call overhead is negligible, small
# enough that the float64 working copy (2 MB) stays cache-sized. Measured here
# (OpenBLAS 0.3.31, 2 cores): 2^18 is fastest; at 2^19 the ones-vector gemv
# crosses OpenBLAS's threading threshold and gets ~70x slower (4.5 ms vs 0.06 ms).
_CHUNK_ELEMENTS = 1 << 18


@dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous
class Moments:
    """Sufficient statistics of one tap, per probe and channel; every array is (N, C).

    Everything is over finite values only, except ``n_zero``, ``n_nan``, ``n_inf``
    and ``total`` (all positions). ``m2`` is the sum of squared deviations from
    the per-channel finite mean, so channels can be merged exactly (Chan et al.).
    Empty channels (no finite value) have ``min``/``max`` NaN and ``s``/``m2`` 0.
    """

    count: np.ndarray  # int64, finite values
    total: int | np.ndarray  # positions per (probe, channel), finite or not; int64 (C,) for stacked taps
    s: np.ndarray  # float64 sum
    m2: np.ndarray  # float64 sum of squared deviations from the channel mean
    abs_sum: np.ndarray  # float64 sum of |x|
    min: np.ndarray  # float64
    max: np.ndarray  # float64
    n_zero: np.ndarray  # int64
    n_nan: np.ndarray  # int64
    n_inf: np.ndarray  # int64


#: The (N, C) array fields of :class:`Moments` (all but ``total``).
MOMENT_ARRAYS: tuple[str, ...] = ("count", "s", "m2", "abs_sum", "min", "max", "n_zero", "n_nan", "n_inf")


def _as_npc(a: np.ndarray) -> np.ndarray:
    """View a tap output (N, ..., C) as (N, P, C), P = product of the middle axes (1 for (N, C))."""
    a = np.asarray(a)
    if a.ndim < 2:
        raise ValueError(f"expected an activation of shape (N, ..., C), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.floating):
        # Integer/bool inputs: float64 avoids overflow in abs (int8 -128) and sums.
        a = a.astype(np.float64)
    # Explicit P: reshape cannot infer -1 when the array is empty.
    p = int(np.prod(a.shape[1:-1], dtype=np.int64))
    return a.reshape(a.shape[0], p, a.shape[-1])


def _block_moments_finite(x: np.ndarray, x64: np.ndarray, s: np.ndarray, ones: np.ndarray,
                          scratch: np.ndarray) -> Moments:
    """Moments of an all-finite block ``x`` (k, P, C) whose float64 copy is ``x64``.

    ``s`` are its float64 sums (k, C), ``ones`` (P,) float64, ``scratch`` float64
    like ``x64``; ``x64`` and ``scratch`` are overwritten. Reductions over P are
    BLAS matrix-vector products with ``ones``: several times faster than numpy's
    strided axis-1 reductions (while the block stays cache-sized), and exact
    for 0/1 counts.
    """
    p = x.shape[1]
    mn = x.min(axis=1).astype(np.float64)
    mx = x.max(axis=1).astype(np.float64)
    # ReLU/sigmoid-like taps rarely cross zero: skip whole passes when signs settle them.
    if np.all((mn > 0) | (mx < 0)):
        n_zero = np.zeros(s.shape, dtype=np.int64)
    else:
        np.equal(x, 0, out=scratch, casting="unsafe")
        n_zero = np.rint(np.matmul(ones, scratch)).astype(np.int64)
    if np.all((mn >= 0) | (mx <= 0)):
        abs_sum = np.where(mn >= 0, s, -s)
    else:
        abs_sum = np.matmul(ones, np.abs(x64, out=scratch))
    # Two-pass variance in float64: E[x^2]-E[x]^2 cancels badly when |mean| >> std
    # and would give a constant channel a non-zero std.
    np.subtract(x64, (s / p)[:, None, :], out=x64)
    m2 = np.einsum("kpc,kpc->kc", x64, x64)
    zeros = np.zeros(s.shape, dtype=np.int64)
    return Moments(count=np.full(s.shape, p, dtype=np.int64), total=p, s=s, m2=m2, abs_sum=abs_sum,
                   min=mn, max=mx, n_zero=n_zero, n_nan=zeros, n_inf=zeros)


def _block_moments_masked(x: np.ndarray) -> Moments:
    """Moments of a block that may contain NaN/Inf (slower: builds masks)."""
    finite = np.isfinite(x)
    count = np.count_nonzero(finite, axis=1).astype(np.int64)
    n_nan = np.count_nonzero(np.isnan(x), axis=1).astype(np.int64)
    n_inf = x.shape[1] - count - n_nan
    x64 = np.where(finite, x, 0.0).astype(np.float64, copy=False)
    s = x64.sum(axis=1)
    abs_sum = np.abs(x64).sum(axis=1)
    mean = s / np.maximum(count, 1)
    d = np.where(finite, x64 - mean[:, None, :], 0.0)
    m2 = np.einsum("kpc,kpc->kc", d, d)
    empty = count == 0
    # `initial` keeps min/max defined for zero positions (P == 0).
    mn = np.where(finite, x, np.inf).min(axis=1, initial=np.inf).astype(np.float64)
    mx = np.where(finite, x, -np.inf).max(axis=1, initial=-np.inf).astype(np.float64)
    mn[empty] = np.nan
    mx[empty] = np.nan
    n_zero = np.count_nonzero(x == 0, axis=1).astype(np.int64)
    return Moments(count=count, total=x.shape[1], s=s, m2=m2, abs_sum=abs_sum, min=mn, max=mx,
                   n_zero=n_zero, n_nan=n_nan, n_inf=n_inf)


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Moments of the union of two disjoint sets of positions (Chan et al. pairwise update); exact."""
    na, nb = a.count.astype(np.float64), b.count.astype(np.float64)
    n = na + nb
    delta = b.s / np.maximum(nb, 1.0) - a.s / np.maximum(na, 1.0)
    # The cross term vanishes when either side is empty, so the placeholder means never matter.
    m2 = a.m2 + b.m2 + delta * delta * (na * nb / np.maximum(n, 1.0))
    return Moments(
        count=a.count + b.count, total=a.total + b.total, s=a.s + b.s, m2=m2,
        abs_sum=a.abs_sum + b.abs_sum,
        min=np.fmin(a.min, b.min), max=np.fmax(a.max, b.max),  # fmin/fmax: NaN only if both empty
        n_zero=a.n_zero + b.n_zero, n_nan=a.n_nan + b.n_nan, n_inf=a.n_inf + b.n_inf,
    )


def moments(a: np.ndarray, *, chunk_elements: int = _CHUNK_ELEMENTS) -> Moments:
    """Sufficient statistics of a tap output ``a`` (N, H, W, C), (N, L, C) or (N, C), one pass.

    The batch is processed in blocks of about ``chunk_elements`` (a few probes,
    or part of one probe's positions, merged exactly): memory is two float64
    blocks of ~2 MB, not a float64 copy of ``a``, and each block stays in
    cache. Sums accumulate in float64 (float32 sums over 10^4 positions lose
    digits); a block is checked for NaN/Inf through its sums (NaN/Inf propagate
    into a float64 sum; finite float32 values cannot overflow it) and only
    blocks with non-finite values take the slower masked path.
    """
    x = _as_npc(a)
    n, p, c = x.shape
    pb = max(1, p if p * c <= chunk_elements else chunk_elements // max(1, c))
    rows = max(1, chunk_elements // max(1, pb * c))
    # Scratch reused across blocks: no fresh allocation (and page faults) per block.
    buf = np.empty((min(rows, n), pb, c), dtype=np.float64)
    scratch = np.empty_like(buf)
    ones = np.ones(pb, dtype=np.float64)
    parts = []
    for i in range(0, n, rows):
        acc = None
        for j in range(0, max(p, 1), pb):  # one (empty) block when p == 0
            block = x[i:i + rows, j:j + pb]
            k, q = block.shape[:2]
            x64 = buf[:k, :q]
            np.copyto(x64, block)
            with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf are detected just below
                s = np.matmul(ones[:q], x64)
            if q > 0 and np.isfinite(s).all():
                m = _block_moments_finite(block, x64, s, ones[:q], scratch[:k, :q])
            else:
                m = _block_moments_masked(block)
            acc = m if acc is None else merge_moments(acc, m)
        parts.append(acc)
    if not parts:  # N == 0
        return _block_moments_masked(x)
    return Moments(total=p, **{f: np.concatenate([getattr(m, f) for m in parts]) for f in MOMENT_ARRAYS})


def channel_stats_from_moments(m: Moments) -> dict[str, np.ndarray]:
    """Per probe and channel statistics (see :func:`channel_stats`) from :class:`Moments`."""
    with np.errstate(invalid="ignore", divide="ignore"):
        cnt = m.count.astype(np.float64)
        mean = m.s / cnt
        std = np.sqrt(m.m2 / cnt)
        mean_abs = m.abs_sum / cnt
        total = np.asarray(m.total, dtype=np.float64)
        frac_zero = np.where(total > 0, m.n_zero / np.where(total > 0, total, 1.0), np.nan)
    return {
        "min": m.min, "max": m.max, "mean": mean, "std": std, "mean_abs": mean_abs,
        "frac_zero": np.asarray(frac_zero, dtype=np.float64), "n_nan": m.n_nan, "n_inf": m.n_inf,
    }


def stacked_layer_stats(m: Moments, offsets: np.ndarray, *, dead_eps: float = 0.0) -> dict[str, np.ndarray]:
    """:func:`layer_stats_from_moments` of many taps at once; arrays (N, T).

    ``m``: moments of T taps stacked along channels (N, ΣC) with ``total`` (ΣC,);
    tap i owns channels ``offsets[i]:offsets[i + 1]`` (``offsets`` (T + 1,), every
    tap at least one channel). One set of segment reductions instead of T calls.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    starts, widths = offsets[:-1], np.diff(offsets)
    if len(starts) == 0 or (widths <= 0).any():
        raise ValueError(f"every tap needs at least one channel, got widths {widths.tolist()}")
    if offsets[0] != 0 or offsets[-1] != m.s.shape[1]:
        raise ValueError(f"offsets {offsets[0]}..{offsets[-1]} do not cover the {m.s.shape[1]} stacked channels")
    seg = lambda a: np.add.reduceat(a, starts, axis=1)  # noqa: E731
    with np.errstate(invalid="ignore", divide="ignore"):
        cnt_c = m.count.astype(np.float64)
        cnt = seg(cnt_c)
        s = seg(m.s)
        mean = s / cnt
        mean_c = np.where(m.count > 0, m.s / np.maximum(cnt_c, 1.0), 0.0)
        # Exact pooled variance: within-channel M2 plus between-channel spread.
        spread = cnt_c * (mean_c - np.repeat(np.nan_to_num(mean), widths, axis=1)) ** 2
        std = np.sqrt(seg(m.m2 + spread) / cnt)
        mean_abs = seg(m.abs_sum) / cnt
        n_el = seg(np.broadcast_to(np.asarray(m.total, dtype=np.float64), m.count.shape[1:])[None, :])
        frac_zero = np.where(n_el > 0, seg(m.n_zero) / np.where(n_el > 0, n_el, 1.0), np.nan)
        # fmin/fmax skip NaN (empty channels) and give NaN only when every channel is empty.
        mn = np.fmin.reduceat(m.min, starts, axis=1)
        mx = np.fmax.reduceat(m.max, starts, axis=1)
        frac_dead = seg(_is_dead(m.max, dead_eps).astype(np.float64)) / widths
    return {
        "min": mn, "max": mx, "mean": mean, "std": std, "mean_abs": mean_abs,
        "frac_zero": np.asarray(frac_zero, dtype=np.float64), "frac_dead_channels": frac_dead,
        "n_nan": seg(m.n_nan), "n_inf": seg(m.n_inf),
    }


def layer_stats_from_moments(m: Moments, *, dead_eps: float = 0.0) -> dict[str, np.ndarray]:
    """Per probe statistics over all channels and positions (see :func:`layer_stats`); arrays (N,)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        cnt_c = m.count.astype(np.float64)
        cnt = cnt_c.sum(axis=1)
        s = m.s.sum(axis=1)
        mean = s / cnt
        mean_c = np.where(m.count > 0, m.s / np.maximum(cnt_c, 1.0), 0.0)
        # Exact pooled variance: within-channel M2 plus between-channel spread.
        m2 = (m.m2 + cnt_c * (mean_c - np.nan_to_num(mean)[:, None]) ** 2).sum(axis=1)
        std = np.sqrt(m2 / cnt)
        mean_abs = m.abs_sum.sum(axis=1) / cnt
        n_el = m.total * m.count.shape[1]
        frac_zero = m.n_zero.sum(axis=1) / np.float64(n_el) if n_el else np.full(cnt.shape, np.nan)
        # fmin/fmax skip NaN (empty channels) and give NaN only when every channel is empty.
        mn = np.fmin.reduce(m.min, axis=1) if m.min.shape[1] else np.full(cnt.shape, np.nan)
        mx = np.fmax.reduce(m.max, axis=1) if m.max.shape[1] else np.full(cnt.shape, np.nan)
        dead = _is_dead(m.max, dead_eps)
        frac_dead = dead.mean(axis=1) if dead.shape[1] else np.full(cnt.shape, np.nan)
    return {
        "min": mn, "max": mx, "mean": mean, "std": std, "mean_abs": mean_abs,
        "frac_zero": np.asarray(frac_zero, dtype=np.float64), "frac_dead_channels": frac_dead,
        "n_nan": m.n_nan.sum(axis=1), "n_inf": m.n_inf.sum(axis=1),
    }


def _is_dead(channel_max: np.ndarray, eps: float) -> np.ndarray:
    """Dead = largest finite value <= eps (never positive); NaN max (no finite value) is not dead."""
    with np.errstate(invalid="ignore"):
        return channel_max <= eps


def channel_stats(a: np.ndarray) -> dict[str, np.ndarray]:
    """Per probe and per channel statistics of one tap output.

    ``a``: (N, H, W, C), (N, L, C), (N, C) or (N, 1, 1, C). Returns arrays of
    shape (N, C): ``min``, ``max``, ``mean``, ``std`` (population, ddof=0) and
    ``mean_abs`` over the finite values only (NaN when a channel has none),
    ``frac_zero`` = exact zeros / all positions, and the counts ``n_nan``,
    ``n_inf`` (int64). Stats are float64 (accumulated in float64). Never warns.
    """
    return channel_stats_from_moments(moments(a))


def layer_stats(a: np.ndarray, *, dead_eps: float = 0.0) -> dict[str, np.ndarray]:
    """Per probe statistics of a whole tap output over all channels and positions.

    ``a`` as for :func:`channel_stats`. Returns arrays of shape (N,): ``min``,
    ``max``, ``mean``, ``std`` (exact pooled population std, not a mean of
    channel stds), ``mean_abs`` (finite values only), ``frac_zero``,
    ``frac_dead_channels`` (channels whose finite max is <= ``dead_eps``, i.e.
    exactly 0 for ReLU outputs) and ``n_nan``, ``n_inf``.
    """
    return layer_stats_from_moments(moments(a), dead_eps=dead_eps)


def _const_categorical(value: str, n: int) -> pd.Categorical:
    """A length-``n`` categorical holding one value: 1 byte per row instead of a string object."""
    return pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), categories=[str(value)])


def _probe_array(probe_ids: Sequence[int] | np.ndarray | None, n: int) -> np.ndarray:
    """Probe ids as int32 (N,); default 0..N-1."""
    ids = np.arange(n) if probe_ids is None else np.asarray(probe_ids)
    if ids.shape != (n,):
        raise ValueError(f"probe_ids has shape {ids.shape}, expected ({n},)")
    return ids.astype(np.int32)


def _stats_shape(stats: dict[str, np.ndarray], names: Iterable[str]) -> tuple[int, ...]:
    """Common shape of the named arrays in ``stats``; raises on a mismatch or missing key."""
    shapes = {k: np.shape(stats[k]) for k in names}
    first = next(iter(shapes.values()))
    if any(s != first for s in shapes.values()):
        raise ValueError(f"stat arrays differ in shape: {shapes}")
    return first


def _stat_columns(stats: dict[str, np.ndarray], names: Iterable[str]) -> dict[str, np.ndarray]:
    """Flatten (row-major) and cast: counts to int32, everything else to float32."""
    cols = {}
    for k in names:
        v = np.asarray(stats[k]).ravel()
        cols[k] = v.astype(np.int32) if k in _COUNT_NAMES else v.astype(np.float32)
    return cols


def channel_stats_frame(
    stats: dict[str, np.ndarray],
    *,
    run: str,
    mini_epoch: int,
    layer: str,
    probe_ids: Sequence[int] | np.ndarray | None = None,
) -> pd.DataFrame:
    """Tidy table, one row per (probe, channel), from :func:`channel_stats` output (N, C).

    Columns: run, mini_epoch, probe, layer, channel, min, max, mean, std,
    mean_abs, frac_zero, n_nan, n_inf. ``run``/``layer`` categorical,
    mini_epoch/probe/channel/n_nan/n_inf int32, statistics float32.
    Rows are probe-major (all channels of probe 0 first).
    """
    n, c = _stats_shape(stats, STAT_NAMES)
    rows = n * c
    return pd.DataFrame({
        "run": _const_categorical(run, rows),
        "mini_epoch": np.full(rows, mini_epoch, dtype=np.int32),
        "probe": np.repeat(_probe_array(probe_ids, n), c),
        "layer": _const_categorical(layer, rows),
        "channel": np.tile(np.arange(c, dtype=np.int32), n),
        **_stat_columns(stats, STAT_NAMES),
    })


def layer_stats_frame(
    stats: dict[str, np.ndarray],
    *,
    run: str,
    mini_epoch: int,
    layer: str,
    probe_ids: Sequence[int] | np.ndarray | None = None,
) -> pd.DataFrame:
    """Tidy table, one row per probe, from :func:`layer_stats` output (N,).

    Columns: run, mini_epoch, probe, layer, min, max, mean, std, mean_abs,
    frac_zero, frac_dead_channels, n_nan, n_inf (dtypes as in
    :func:`channel_stats_frame`).
    """
    (n,) = _stats_shape(stats, LAYER_STAT_NAMES)
    return pd.DataFrame({
        "run": _const_categorical(run, n),
        "mini_epoch": np.full(n, mini_epoch, dtype=np.int32),
        "probe": _probe_array(probe_ids, n),
        "layer": _const_categorical(layer, n),
        **_stat_columns(stats, LAYER_STAT_NAMES),
    })


# --------------------------------------------------------------------- gates


def histogram_rows(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Per-row histogram of ``x`` (N, K) over ``edges`` (B+1,), values clipped into the end bins.

    Returns int64 counts (N, B). Bins follow ``np.histogram`` (last bin closed);
    values below ``edges[0]`` count in the first bin, above ``edges[-1]`` in
    the last, so each row sums to its number of finite values (NaN/Inf are skipped).
    """
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    x = x.reshape(x.shape[0], -1)
    edges = np.asarray(edges, dtype=np.float64)
    nb = edges.size - 1
    if nb < 1:
        raise ValueError("need at least two bin edges")
    n = x.shape[0]
    finite = np.isfinite(x)
    # Edges in x's dtype: a float32 gate of float32(0.95) belongs to the bin starting at 0.95.
    idx = np.clip(np.searchsorted(edges.astype(x.dtype), x, side="right") - 1, 0, nb - 1)
    flat = (idx + nb * np.arange(n)[:, None])[finite]
    return np.bincount(flat, minlength=n * nb).reshape(n, nb).astype(np.int64)


def gate_stats(
    g: np.ndarray,
    *,
    low: float = 0.05,
    high: float = 0.95,
    tol: float = 0.02,
    bins: np.ndarray = GATE_BINS,
) -> dict[str, np.ndarray]:
    """Saturation and distribution of SE gate values ``g`` (N, C) or (N, 1, 1, C).

    Per probe (N,): ``frac_low`` = fraction of gates < ``low`` (switched off),
    ``frac_high`` = fraction > ``high`` (pinned open), ``frac_half`` = fraction
    in [0.5 - tol, 0.5 + tol] (piled at 0.5, the signature of a dead squeeze
    path), ``mean``, ``std`` (population), ``n_nan``, ``n_inf``; ``hist`` (N, B)
    counts over ``bins`` (values outside [0, 1] clipped into the end bins) and
    ``edges`` (B+1,). Fractions, moments and histograms use finite values only;
    every statistic is NaN for a probe with none.
    """
    raw = np.asarray(g)
    if raw.ndim < 2:
        raise ValueError(f"expected gates of shape (N, C) or (N, 1, 1, C), got {raw.shape}")
    raw = raw.reshape(raw.shape[0], -1)
    if not np.issubdtype(raw.dtype, np.floating):
        raw = raw.astype(np.float64)
    # Thresholds in the gates' own dtype, so a float32 gate equal to float32(0.48)
    # is on the boundary exactly as the float64 value 0.48 is.
    lo, hi, half_lo, half_hi = (raw.dtype.type(t) for t in (low, high, 0.5 - tol, 0.5 + tol))
    x = raw.astype(np.float64)
    finite = np.isfinite(x)
    cnt = finite.sum(axis=1).astype(np.float64)
    xf = np.where(finite, x, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = xf.sum(axis=1) / cnt
        d = np.where(finite, x - np.nan_to_num(mean)[:, None], 0.0)
        std = np.sqrt((d * d).sum(axis=1) / cnt)
        frac_low = (finite & (raw < lo)).sum(axis=1) / cnt
        frac_high = (finite & (raw > hi)).sum(axis=1) / cnt
        # Interval form, not |x-0.5| <= tol, whose rounding would exclude 0.48 and 0.52.
        frac_half = (finite & (raw >= half_lo) & (raw <= half_hi)).sum(axis=1) / cnt
    edges = np.asarray(bins, dtype=np.float64)
    return {
        "frac_low": frac_low, "frac_high": frac_high, "frac_half": frac_half,
        "mean": mean, "std": std,
        "n_nan": np.isnan(x).sum(axis=1).astype(np.int64),
        "n_inf": np.isinf(x).sum(axis=1).astype(np.int64),
        "hist": histogram_rows(raw, edges), "edges": edges,
    }


_GATE_FRAME_STATS = ("frac_low", "frac_high", "frac_half", "mean", "std")


def gate_stats_frame(
    stats: dict[str, np.ndarray],
    *,
    run: str,
    mini_epoch: int,
    block: str,
    probe_ids: Sequence[int] | np.ndarray | None = None,
) -> pd.DataFrame:
    """Tidy table, one row per probe, from :func:`gate_stats` output.

    Columns: run, mini_epoch, probe, block, frac_low, frac_high, frac_half,
    mean, std (run/block categorical, mini_epoch/probe int32, stats float32).
    """
    (n,) = _stats_shape(stats, _GATE_FRAME_STATS)
    return pd.DataFrame({
        "run": _const_categorical(run, n),
        "mini_epoch": np.full(n, mini_epoch, dtype=np.int32),
        "probe": _probe_array(probe_ids, n),
        "block": _const_categorical(block, n),
        **_stat_columns(stats, _GATE_FRAME_STATS),
    })


def gate_hist_frame(
    counts: np.ndarray,
    edges: np.ndarray,
    *,
    run: str,
    mini_epoch: int,
    block: str,
) -> pd.DataFrame:
    """Tidy histogram, one row per bin, counts summed over probes.

    ``counts``: (N, B) per probe (e.g. ``gate_stats(g)["hist"]`` or
    ``logit_hist(x)[0]``) or (B,); ``edges``: (B+1,). Columns: run, mini_epoch,
    block, bin_left, bin_right (float64, so edges match exactly across
    checkpoints), count (int64).
    """
    counts = np.asarray(counts)
    total = counts.reshape(-1, counts.shape[-1]).sum(axis=0).astype(np.int64)
    edges = np.asarray(edges, dtype=np.float64)
    if edges.shape != (total.size + 1,):
        raise ValueError(f"{total.size} bins need {total.size + 1} edges, got shape {edges.shape}")
    b = total.size
    return pd.DataFrame({
        "run": _const_categorical(run, b),
        "mini_epoch": np.full(b, mini_epoch, dtype=np.int32),
        "block": _const_categorical(block, b),
        "bin_left": edges[:-1],
        "bin_right": edges[1:],
        "count": total,
    })


def logit_hist(
    x: np.ndarray,
    bins: int | np.ndarray = 30,
    range: tuple[float, float] | None = None,  # noqa: A002 - mirrors np.histogram
) -> tuple[np.ndarray, np.ndarray]:
    """Per-probe histogram of unbounded values (gate logits, squeeze activations).

    ``x``: (N, ...). ``bins``: a count or explicit edges; with a count and no
    ``range`` the range is the finite min/max of the whole batch (widened by
    0.5 each side if constant, (0, 1) if nothing is finite, as ``np.histogram``).
    Out-of-range values are clipped into the end bins, NaN/Inf skipped.
    Returns (counts (N, B) int64, edges (B+1,) float64). Pass a fixed ``range``
    to compare checkpoints bin by bin.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(x.shape[0], -1) if x.ndim else x.reshape(1, 1)
    if np.ndim(bins) == 1:
        edges = np.asarray(bins, dtype=np.float64)
    else:
        if range is None:
            fin = x[np.isfinite(x)]
            lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 1.0)
        else:
            lo, hi = float(range[0]), float(range[1])
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, int(bins) + 1)
    return histogram_rows(x, edges), edges


# ------------------------------------------------------------ dead channels

_DEAD_KEYS = ("run", "mini_epoch", "layer")


def dead_channel_mask(frame: pd.DataFrame, *, eps: float = 0.0) -> pd.DataFrame:
    """Per (run, mini_epoch, layer, channel): is the channel dead on every probe in ``frame``?

    A channel is dead on a probe when its max is <= ``eps`` (with the default 0
    that is "exactly zero everywhere" for ReLU-family outputs; for taps that
    can be negative it means "never positive"). A NaN max (no finite value)
    is not dead. ``frame`` is a :func:`channel_stats_frame` table (``run``
    optional). Returns columns run?, mini_epoch, layer, channel, dead (bool).
    """
    keys = [k for k in _DEAD_KEYS if k in frame.columns] + ["channel"]
    dead = _is_dead(frame["max"].to_numpy(dtype=np.float64), eps)
    out = frame[keys].assign(dead=dead).groupby(keys, observed=True, sort=True)["dead"].all()
    return out.reset_index()


def dead_channels(frame: pd.DataFrame, *, eps: float = 0.0) -> pd.DataFrame:
    """Dead channel counts per (run, mini_epoch, layer), see :func:`dead_channel_mask`.

    Columns: run?, mini_epoch, layer, n_channels, n_dead (int64), frac_dead (float64).
    """
    mask = dead_channel_mask(frame, eps=eps)
    keys = [k for k in _DEAD_KEYS if k in mask.columns]
    g = mask.groupby(keys, observed=True, sort=True)["dead"]
    out = pd.DataFrame({"n_channels": g.size().astype(np.int64), "n_dead": g.sum().astype(np.int64)})
    out["frac_dead"] = out["n_dead"] / out["n_channels"]
    return out.reset_index()


def concat_frames(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate tidy frames keeping categorical columns categorical (union of categories).

    ``pd.concat`` turns categoricals with different categories into object
    columns, which would undo the memory saving of the per-tap frames.
    """
    frames = [f for f in frames if f is not None]
    if not frames:
        return pd.DataFrame()
    cat_cols = [c for c, dt in frames[0].dtypes.items() if isinstance(dt, pd.CategoricalDtype)]
    if cat_cols:
        cats = {c: pd.api.types.union_categoricals([f[c] for f in frames]).categories for c in cat_cols}
        frames = [f.assign(**{c: f[c].cat.set_categories(cats[c]) for c in cat_cols}) for f in frames]
    return pd.concat(frames, ignore_index=True)
