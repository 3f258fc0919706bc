"""Statistics from checkpoint weights alone: norms, distance from init, update ratios, BatchNorm."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "TRAINABLE_NAMES",
    "BATCHNORM_NAMES",
    "GAMMA_NEAR_ZERO",
    "Norms",
    "split_path",
    "norms",
    "weight_norms",
    "weight_rows",
    "Selected",
    "select",
    "weight_table",
    "batchnorm_stats",
    "batchnorm_table",
    "update_ratio_per_step",
    "iter_npz",
]

#: Last path components of the trainable tensors whose norms and updates are
#: tracked (Keras 3 names: Conv/Dense ``kernel``/``bias``, DepthwiseConv
#: ``depthwise_kernel``, SeparableConv ``pointwise_kernel``, BatchNorm/LayerNorm
#: ``gamma``/``beta``, Embedding ``embeddings``). Moving statistics, seed
#: generator states and optimizer slots are excluded.
TRAINABLE_NAMES: frozenset[str] = frozenset({
    "kernel", "bias", "depthwise_kernel", "pointwise_kernel", "gamma", "beta", "embeddings",
})
#: Variable names that make a layer a BatchNormalization layer (recognised by name only).
BATCHNORM_NAMES: frozenset[str] = frozenset({"gamma", "beta", "moving_mean", "moving_variance"})
#: |gamma| below this counts as "near zero" (the BN channel is switched off).
GAMMA_NEAR_ZERO: float = 1e-3

Weights = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Norms:
    """Norm-type statistics of one array over its finite entries."""

    l2: float
    rms: float
    max_abs: float
    n_nan: int
    n_inf: int
    size: int


def split_path(path: str) -> tuple[str, str]:
    """``"block1/conv1/kernel"`` -> ``("block1/conv1", "kernel")``; a path without '/' is its own layer."""
    layer, sep, name = path.rpartition("/")
    return (layer, name) if sep else (path, path)


def _selected(w: Weights, names: Collection[str] | None) -> dict[str, np.ndarray]:
    """Floating-point variables of ``w`` whose last path component is in ``names`` (all if None).

    Each entry is read once: an ``np.load`` archive re-reads the file on every access.
    Keeps the mapping's order (checkpoints are written in model order, i.e. by depth).
    """
    out = {}
    for path in w.keys():
        if names is not None and split_path(path)[1] not in names:
            continue
        arr = np.asarray(w[path])
        if np.issubdtype(arr.dtype, np.floating):
            out[path] = arr
    return out


def _sumsq(x: np.ndarray) -> tuple[float, int, int]:
    """(sum of squares over finite entries in float64, n_nan, n_inf) of any float array."""
    flat = np.asarray(x, dtype=np.float64).ravel()
    ss = float(np.dot(flat, flat))
    if np.isfinite(ss):
        # NaN/Inf would have propagated into the sum, so there are none.
        return ss, 0, 0
    finite = np.isfinite(flat)
    f = flat[finite]
    n_nan = int(np.isnan(flat).sum())
    return float(np.dot(f, f)), n_nan, int(flat.size - finite.sum() - n_nan)


def norms(x: np.ndarray) -> Norms:
    """L2 norm, RMS and max |x| over the finite entries of ``x`` (NaN when there are none)."""
    x = np.asarray(x)
    ss, n_nan, n_inf = _sumsq(x)
    n_fin = x.size - n_nan - n_inf
    if n_fin == 0:
        return Norms(np.nan, np.nan, np.nan, n_nan, n_inf, int(x.size))
    ax = np.abs(x[np.isfinite(x)] if n_nan or n_inf else x)
    return Norms(float(np.sqrt(ss)), float(np.sqrt(ss / n_fin)), float(ax.max()), n_nan, n_inf, int(x.size))


def _diff_norm(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """‖a − b‖ in float64 over entries finite in both; NaN if either is missing or shapes differ."""
    if a is None or b is None or a.shape != b.shape:
        return np.nan
    d = np.subtract(a, b, dtype=np.float64).ravel()
    ss = float(np.dot(d, d))
    if not np.isfinite(ss):
        d = d[np.isfinite(d)]
        if d.size == 0:
            return np.nan
        ss = float(np.dot(d, d))
    return float(np.sqrt(ss))


def _ratio(num: float, den: float) -> float:
    """num / den, NaN when the denominator is 0 or NaN (e.g. a zero-initialised bias)."""
    return num / den if den > 0 else np.nan


def _frame(rows: list[dict], columns: list[str], cat: tuple[str, ...]) -> pd.DataFrame:
    """DataFrame with fixed columns (also when empty) and categorical string columns ``cat``."""
    df = pd.DataFrame(rows, columns=columns)
    for c in cat:
        df[c] = df[c].astype("category")
    if "mini_epoch" in df:
        df["mini_epoch"] = df["mini_epoch"].astype(np.int32)
    return df


_NORM_COLUMNS = ["layer", "variable", "l2", "rms", "max_abs", "n_nan", "n_inf", "size"]


def weight_norms(w: Weights, *, names: Collection[str] | None = TRAINABLE_NAMES) -> pd.DataFrame:
    """Norms of one checkpoint, one row per (layer, variable).

    ``w``: variable path -> array (e.g. ``np.load(ckpt)``); ``names`` selects
    variables by last path component (None: every floating-point variable).
    Columns: layer, variable (categorical), l2, rms, max_abs (float64, finite
    entries only), n_nan, n_inf, size (int64).
    """
    rows = []
    for path, arr in _selected(w, names).items():
        layer, var = split_path(path)
        n = norms(arr)
        rows.append({"layer": layer, "variable": var, "l2": n.l2, "rms": n.rms, "max_abs": n.max_abs,
                     "n_nan": n.n_nan, "n_inf": n.n_inf, "size": n.size})
    df = _frame(rows, _NORM_COLUMNS, ("layer", "variable"))
    return df.astype({c: np.int64 for c in ("n_nan", "n_inf", "size")})


_WEIGHT_COLUMNS = ["mini_epoch", "layer", "variable", "norm", "dist_from_init", "rel_dist_from_init",
                   "update_norm", "update_ratio", "n_nan", "n_inf"]


class Selected(dict):
    """Selected float arrays of one checkpoint (path -> array), as :func:`weight_rows` returns them.

    Also holds the arrays' L2 norms once computed, so the next checkpoint's update ratios
    and every distance from init reuse them.
    """

    l2: np.ndarray | None = None  # (n_arrays,) finite-entry L2 norms, in key order


def select(w: Weights, names: Collection[str] | None = TRAINABLE_NAMES) -> Selected:
    """The arrays of ``w`` that :func:`weight_rows` tracks, ready to pass as its ``init`` or ``prev``."""
    return Selected(_selected(w, names))


#: float64 values :func:`_sum_squares` converts at a time: a buffer this size is reused for every
#: array, where a float64 copy of every weight at once would be written to fresh memory.
_CHUNK = 2 ** 18


def _sum_squares(arrays: list[np.ndarray], minus: Sequence[list[np.ndarray]] = ()) -> np.ndarray:
    """float64 (1 + len(minus), len(arrays)): row 0 the sum of squares of each array, row k that of
    ``arrays[i] - minus[k - 1][i]``; NaN/Inf propagate. Each array is converted to float64 once.

    ``einsum``, not ``dot``: BLAS would start its own threads, which then compete with the forward
    pass running beside this in the sweep.
    """
    biggest = max(a.size for a in arrays)
    buf = np.empty((2, min(biggest, _CHUNK)), np.float64)
    out = np.zeros((1 + len(minus), len(arrays)), np.float64)
    for i, a in enumerate(arrays):
        a = a.reshape(-1)
        refs = [m[i].reshape(-1) for m in minus]
        for lo in range(0, a.size, _CHUNK):
            hi = min(lo + _CHUNK, a.size)
            v, d = buf[0, :hi - lo], buf[1, :hi - lo]
            v[...] = a[lo:hi]
            out[0, i] += np.einsum("i,i->", v, v)
            for k, b in enumerate(refs, 1):
                np.subtract(v, b[lo:hi], out=d)
                out[k, i] += np.einsum("i,i->", d, d)
    return out


def _reference(ref: Weights, cur: Selected) -> tuple[list[np.ndarray] | None, np.ndarray | None]:
    """``ref``'s arrays in ``cur``'s order (None unless every one is there with its shape) and their norms
    (None when not all finite); norms are cached on a ``Selected``."""
    arrays = [ref.get(k) for k in cur]
    if any(a is None or np.shape(a) != cur[k].shape for a, k in zip(arrays, cur)):
        return None, None
    arrays = [np.asarray(a) for a in arrays]
    same = isinstance(ref, Selected) and list(ref) == list(cur)
    l2 = ref.l2 if same else None
    if l2 is None:
        ss = _sum_squares(arrays)[0]
        l2 = np.sqrt(ss) if np.isfinite(ss).all() else None
        if same:
            ref.l2 = l2
    return arrays, l2


def weight_rows(
    mini_epoch: int,
    w: Weights,
    *,
    init: Weights,
    prev: Weights | None,
    names: Collection[str] | None = TRAINABLE_NAMES,
) -> tuple[list[dict], Selected]:
    """Rows of :func:`weight_table` for one checkpoint, plus the selected arrays to pass as the next ``prev``.

    For callers that read each checkpoint once and compute several tables from it.
    ``prev`` is the previous checkpoint (None: no update columns, NaN). Pass the
    returned ``Selected`` back as ``prev`` (and a ``Selected`` of the first checkpoint
    as ``init``) and each checkpoint's norms are computed once.
    """
    cur = Selected(_selected(w, names))
    if not cur:
        return [], cur
    arrays = list(cur.values())
    if any(a.size == 0 for a in arrays):
        return _weight_rows_loop(mini_epoch, cur, init, prev), cur
    given, norms_ref = [], []
    for ref in (init, prev):
        if ref is None or not len(ref):
            continue
        ref_arrays, l2 = _reference(ref, cur)
        if ref_arrays is None or l2 is None:  # a variable missing or reshaped, or NaN/Inf: per variable
            return _weight_rows_loop(mini_epoch, cur, init, prev), cur
        given.append(ref_arrays)
        norms_ref.append(l2)
    ss = _sum_squares(arrays, given)
    if not np.isfinite(ss).all():  # NaN/Inf: the exact masked per-variable path
        return _weight_rows_loop(mini_epoch, cur, init, prev), cur
    cur.l2 = np.sqrt(ss[0])
    nan = np.full(len(cur), np.nan)
    found = iter(zip(np.sqrt(ss[1:]), norms_ref))
    (dist, l2_init), (upd, l2_prev) = [next(found) if ref is not None and len(ref) else (nan, nan)
                                       for ref in (init, prev)]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(l2_init > 0, dist / np.where(l2_init > 0, l2_init, 1.0), np.nan)
        ratio = np.where(l2_prev > 0, upd / np.where(l2_prev > 0, l2_prev, 1.0), np.nan)
    rows = []
    for i, path in enumerate(cur):
        layer, var = split_path(path)
        rows.append({"mini_epoch": int(mini_epoch), "layer": layer, "variable": var, "norm": float(cur.l2[i]),
                     "dist_from_init": float(dist[i]), "rel_dist_from_init": float(rel[i]),
                     "update_norm": float(upd[i]), "update_ratio": float(ratio[i]), "n_nan": 0, "n_inf": 0})
    return rows, cur


def _weight_rows_loop(mini_epoch: int, cur: Mapping[str, np.ndarray], init: Weights,
                      prev: Weights | None) -> list[dict]:
    """Rows of :func:`weight_rows`, one variable at a time (NaN/Inf-safe)."""
    rows = []
    for path, arr in cur.items():
        layer, var = split_path(path)
        n = norms(arr)
        w0 = init.get(path)
        p = prev.get(path) if prev is not None else None
        n0 = norms(w0).l2 if w0 is not None else np.nan
        n_prev = norms(p).l2 if p is not None else np.nan
        dist = _diff_norm(arr, w0)
        upd = _diff_norm(arr, p)
        rows.append({
            "mini_epoch": int(mini_epoch), "layer": layer, "variable": var, "norm": n.l2,
            "dist_from_init": dist, "rel_dist_from_init": _ratio(dist, n0),
            "update_norm": upd, "update_ratio": _ratio(upd, n_prev),
            "n_nan": n.n_nan, "n_inf": n.n_inf,
        })
    return rows


def weight_table(
    checkpoints: Iterable[tuple[int, Weights]],
    init: Weights,
    *,
    prev: Weights | None = None,
    names: Collection[str] | None = TRAINABLE_NAMES,
) -> pd.DataFrame:
    """Norm, distance from init and update ratio per (mini_epoch, layer, variable), streamed.

    ``checkpoints`` yields (mini_epoch, weights) in increasing order and is
    consumed once; only ``init`` and the previous checkpoint's selected arrays
    stay in memory. ``prev`` seeds the "previous checkpoint" (to resume a
    table); without it the first checkpoint (normally mini-epoch 0) has NaN
    update_norm/update_ratio. Columns: mini_epoch (int32), layer, variable
    (categorical), norm = ‖W‖, dist_from_init = ‖W − W0‖, rel_dist_from_init
    = that / ‖W0‖, update_norm = ‖W_t − W_{t−1}‖, update_ratio = that /
    ‖W_{t−1}‖ (float64; ratios NaN when the denominator is 0, e.g. zero-init
    biases), n_nan, n_inf (int64). Norms use finite entries only; a variable
    missing from ``init``/``prev`` or with a different shape gets NaN there.
    """
    init_sel = select(init, names)
    prev_sel = select(prev, names) if prev is not None else None
    rows: list[dict] = []
    for mini_epoch, w in checkpoints:
        new_rows, prev_sel = weight_rows(mini_epoch, w, init=init_sel, prev=prev_sel, names=names)
        rows.extend(new_rows)
    df = _frame(rows, _WEIGHT_COLUMNS, ("layer", "variable"))
    return df.astype({"n_nan": np.int64, "n_inf": np.int64})


_BN_COLUMNS = ["mini_epoch", "layer", "gamma_mean", "gamma_min", "gamma_max", "beta_mean",
               "moving_mean_mean", "moving_mean_abs_mean", "moving_variance_mean",
               "moving_variance_min", "frac_gamma_near_zero"]


def _finite(x: np.ndarray | None) -> np.ndarray | None:
    """Finite entries of ``x`` as float64 (None stays None)."""
    if x is None:
        return None
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def _agg(x: np.ndarray | None, fn) -> float:
    """``fn(x)`` or NaN when ``x`` is missing or empty."""
    return float(fn(x)) if x is not None and x.size else np.nan


def batchnorm_stats(
    mini_epoch: int, w: Weights, *, gamma_eps: float = GAMMA_NEAR_ZERO,
) -> list[dict]:
    """Rows of :func:`batchnorm_table` for one checkpoint (one per BatchNorm layer)."""
    layers: dict[str, dict[str, np.ndarray]] = {}
    for path in w.keys():
        layer, var = split_path(path)
        if var in BATCHNORM_NAMES:
            layers.setdefault(layer, {})[var] = w[path]
    rows = []
    for layer, v in layers.items():
        # gamma/beta alone also belong to LayerNormalization: moving stats make it BatchNorm.
        if "moving_mean" not in v or "moving_variance" not in v:
            continue
        g, b = _finite(v.get("gamma")), _finite(v.get("beta"))
        mm, mv = _finite(v["moving_mean"]), _finite(v["moving_variance"])
        rows.append({
            "mini_epoch": int(mini_epoch), "layer": layer,
            "gamma_mean": _agg(g, np.mean), "gamma_min": _agg(g, np.min), "gamma_max": _agg(g, np.max),
            "beta_mean": _agg(b, np.mean),
            "moving_mean_mean": _agg(mm, np.mean),
            "moving_mean_abs_mean": _agg(mm, lambda x: np.abs(x).mean()),
            "moving_variance_mean": _agg(mv, np.mean), "moving_variance_min": _agg(mv, np.min),
            "frac_gamma_near_zero": _agg(g, lambda x: np.mean(np.abs(x) < gamma_eps)),
        })
    return rows


def batchnorm_table(
    checkpoints: Iterable[tuple[int, Weights]], *, gamma_eps: float = GAMMA_NEAR_ZERO,
) -> pd.DataFrame:
    """BatchNorm parameter and moving-statistic summaries per (mini_epoch, layer), streamed.

    A layer is BatchNorm when it has ``moving_mean`` and ``moving_variance``
    (``gamma``/``beta`` may be absent with scale/center=False: those columns
    are then NaN). Columns: mini_epoch (int32), layer (categorical),
    gamma_mean/min/max, beta_mean, moving_mean_mean, moving_mean_abs_mean,
    moving_variance_mean, moving_variance_min, frac_gamma_near_zero
    (|γ| < ``gamma_eps``), all float64 over finite entries.
    """
    rows: list[dict] = []
    for mini_epoch, w in checkpoints:
        rows.extend(batchnorm_stats(mini_epoch, w, gamma_eps=gamma_eps))
    return _frame(rows, _BN_COLUMNS, ("layer",))


def update_ratio_per_step(
    update_ratio: float | np.ndarray | pd.Series, steps_between: int | np.ndarray | pd.Series,
) -> float | np.ndarray | pd.Series:
    """Approximate per-step update ratio from a ratio measured across ``steps_between`` steps.

    Returns ``update_ratio / steps_between`` (NaN where steps <= 0); works on
    scalars, arrays and Series. Exact only if every step moved the weights the
    same way by the same amount. SGD steps partly cancel, so ‖ΣΔ‖ < Σ‖Δ‖ and
    this is a lower bound on the mean per-step ratio (for uncorrelated steps it
    is low by about sqrt(steps)); it also ignores the change of ‖W‖ within the
    interval. Good enough to tell ~1e-3 from 1e-6 or 1e-1, not for fine comparison.
    """
    steps = np.asarray(steps_between, dtype=np.float64)
    ratio = np.asarray(update_ratio, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = ratio / np.where(steps > 0, steps, np.nan)
    if isinstance(update_ratio, pd.Series):
        return pd.Series(out, index=update_ratio.index, name=update_ratio.name)
    return out if np.ndim(out) else float(out)


def iter_npz(paths: Iterable[tuple[int, str]]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield (mini_epoch, weights) from checkpoint ``.npz`` files one at a time, closing each file."""
    for mini_epoch, path in paths:
        with np.load(path, allow_pickle=False) as z:
            yield mini_epoch, {k: z[k] for k in z.files}
