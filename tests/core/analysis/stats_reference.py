"""Reference and test-only builders of statistics (the sweep builds the product's tables in
``core.analysis.sweeptables``): one-call per-tap statistics, the unstacked layer statistics that
``stacked_layer_stats`` must equal, and tidy frames of them."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from core.analysis.stats import (
    LAYER_STAT_NAMES, STAT_NAMES, Moments, _is_dead, channel_stats_from_moments, histogram_rows, moments,
)

_COUNT_NAMES = ("n_nan", "n_inf")


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

