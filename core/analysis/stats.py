"""Activation statistics (per channel, per layer, SE gates, histograms) in pure numpy.

A channel is **dead** when its maximum over every position of every probe image is <= ``eps`` (0):
never positive, i.e. a ReLU output that is zero everywhere. :func:`dead_channels` is the one
definition (the diagnostics, the Compare page and the report use it)."""
from __future__ import annotations

from dataclasses import dataclass

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
    "channel_stats_from_moments",
    "stacked_layer_stats",
    "gate_stats",
    "histogram_rows",
    "dead_channel_mask",
    "dead_channels",
]

#: Keys of :func:`channel_stats` (float stats first, then integer counts).
STAT_NAMES: tuple[str, ...] = ("min", "max", "mean", "std", "mean_abs", "frac_zero", "n_nan", "n_inf")
#: Keys of :func:`layer_stats`.
LAYER_STAT_NAMES: tuple[str, ...] = (
    "min", "max", "mean", "std", "mean_abs", "frac_zero", "frac_dead_channels", "n_nan", "n_inf",
)

#: Fixed histogram edges for SE gates: 20 bins of width 0.05 over [0, 1].
#: Fixed (not data-dependent) so histograms from different checkpoints, probes
#: and blocks can be summed and compared bin by bin; the end bins line up with
#: the default "switched off" (< 0.05) and "pinned open" (> 0.95) thresholds.
#: As in ``np.histogram`` every bin is half-open ``[left, right)`` except the
#: last, which is closed, so a gate of exactly 1.0 lands in the last bin.
GATE_BINS: np.ndarray = np.linspace(0.0, 1.0, 21)
GATE_BINS.flags.writeable = False  # shared by every caller: an in-place edit would skew all histograms

# Elements per block: big enough that per-call overhead is negligible, small
# enough that the float64 working copy (2 MB) stays cache-sized. At 2^19 the
# ones-vector gemv crosses OpenBLAS's threading threshold and becomes far slower
# (bench/bench_internals.py times both sizes).
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
    """Per probe and channel statistics from :class:`Moments`, arrays (N, C): ``min``, ``max``, ``mean``,
    ``std`` (population) and ``mean_abs`` over the finite values (NaN for a channel with none),
    ``frac_zero`` = exact zeros / all positions, and the counts ``n_nan``, ``n_inf``."""
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


def _is_dead(channel_max: np.ndarray, eps: float) -> np.ndarray:
    """Dead = largest finite value <= eps (never positive); NaN max (no finite value) is not dead."""
    with np.errstate(invalid="ignore"):
        return channel_max <= eps


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
