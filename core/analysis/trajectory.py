"""One layer followed across every checkpoint: percentile bands per probe image, the filmstrip of one channel
(or the layer's mean map), and the SE blocks' excitation scale (from the sweep tables)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

#: Percentiles of TensorBoard's distributions view: min, ±1.5σ, ±1σ, median, max for a normal distribution.
PERCENTILES: tuple[int, ...] = (0, 7, 16, 50, 84, 93, 100)
BAND_COLUMNS = tuple(f"p{q}" for q in PERCENTILES)

Progress = Callable[[int, int], None]


def percentile_bands(acts: np.ndarray, q: Sequence[float] = PERCENTILES) -> np.ndarray:
    """Per image percentiles of one tap's output ``acts`` (N, ...) over all its positions and channels: (N, len(q)).

    Non-finite values are left out (NaN row when an image has none).
    """
    a = np.asarray(acts, dtype=np.float64).reshape(len(acts), -1)
    out = np.full((a.shape[0], len(q)), np.nan)
    for i, row in enumerate(a):
        row = row[np.isfinite(row)]
        if row.size:
            out[i] = np.percentile(row, q)
    return out


def _over_checkpoints(engine: Any, ckpts: Sequence[Any], images: np.ndarray, tap: str,
                      progress: Progress | None) -> Iterator[tuple[int, np.ndarray]]:
    """(mini_epoch, tap output for ``images``) at every checkpoint, one forward pass up to the tap each."""
    engine.prepare_tap(tap)
    for i, c in enumerate(ckpts):
        a = engine.tap_activations(c, images, tap)
        if a is None:  # evicted by another session between prepare and use
            engine.prepare_tap(tap)
            a = engine.tap_activations(c, images, tap)
        yield int(c.mini_epoch), np.asarray(a)
        if progress is not None:
            progress(i + 1, len(ckpts))


def distribution_frame(engine: Any, ckpts: Sequence[Any], images: np.ndarray, tap: str,
                       probe_ids: Sequence[Any] | None = None, progress: Progress | None = None) -> pd.DataFrame:
    """Percentile bands of ``tap`` for every image at every checkpoint.

    ``images`` uint8 (N, H, W, C) at the model's input size. Columns: mini_epoch, probe (the id from
    ``probe_ids``, default 0..N-1), p0, p7, p16, p50, p84, p93, p100.
    """
    ids = list(range(len(images))) if probe_ids is None else list(probe_ids)
    rows = []
    for me, a in _over_checkpoints(engine, ckpts, images, tap, progress):
        for pid, band in zip(ids, percentile_bands(a)):
            rows.append({"mini_epoch": me, "probe": pid, **dict(zip(BAND_COLUMNS, band))})
    return pd.DataFrame(rows, columns=["mini_epoch", "probe", *BAND_COLUMNS])


@dataclass(frozen=True)
class Filmstrip:
    """One channel (or the mean over channels, ``channel`` None) of a tap for one image at every checkpoint.

    ``maps`` float32 (T, H, W); ``lo``/``hi`` the fixed colour range over all of them (finite values).
    """

    tap: str
    channel: int | None
    mini_epochs: tuple[int, ...]
    maps: np.ndarray
    lo: float
    hi: float


def spatial_map(a: np.ndarray, channel: int | None) -> np.ndarray:
    """One image's tap output (1, H, W, C), (1, L, C) or (1, C) -> float32 (H, W) of ``channel`` or the channel mean."""
    x = np.asarray(a)[0]
    if x.ndim == 1:
        x = x[None, None, :]
    elif x.ndim == 2:
        x = x[None, :, :]
    x = x.astype(np.float32)
    return x[..., channel] if channel is not None else x.mean(axis=-1)


def filmstrip(engine: Any, ckpts: Sequence[Any], image: np.ndarray, tap: str, channel: int | None = None,
              progress: Progress | None = None) -> Filmstrip:
    """The :class:`Filmstrip` of ``tap`` for one uint8 image (H, W, C) at the model's input size."""
    mes, maps = [], []
    for me, a in _over_checkpoints(engine, ckpts, np.asarray(image)[None], tap, progress):
        mes.append(me)
        maps.append(spatial_map(a, channel))
    stack = np.stack(maps) if maps else np.zeros((0, 1, 1), np.float32)
    fin = stack[np.isfinite(stack)]
    lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 1.0)
    return Filmstrip(tap, channel, tuple(mes), stack, lo, hi)


# ---- SE excitation scale (from the sweep tables) ---------------------------------------------------------

SE_SCALE_COLUMNS = ("block", "mini_epoch", "input_mean_abs", "input_max", "gate_mean", "output_mean_abs",
                    "output_max", "topk_share", "k", "near_one_weight", "near_one_loss", "near_one_share")


def _median_stat(layers: pd.DataFrame, tap: str | None, stat: str) -> pd.Series:
    if tap is None or not len(layers):
        return pd.Series(dtype=float)
    d = layers[layers["layer"].astype(str) == tap]
    return d.groupby("mini_epoch")[stat].median()


def topk_share(channels: pd.DataFrame, tap: str, k: int) -> pd.Series:
    """Per mini-epoch: share of the tap's total mean |a| carried by its ``k`` largest channels (median over
    probes)."""
    d = channels[channels["layer"].astype(str) == tap]
    if not len(d):
        return pd.Series(dtype=float)

    def share(g: pd.DataFrame) -> float:
        v = np.sort(g["mean_abs"].to_numpy(np.float64))[::-1]
        tot = v.sum()
        return float(v[:k].sum() / tot) if tot > 0 else math.nan

    per = d.groupby(["mini_epoch", "probe"]).apply(share, include_groups=False)
    return per.groupby(level="mini_epoch").median()


def se_scale(result: Any, blocks: Sequence[Any], k: int = 3, near_one_weight: float = 0.0) -> pd.DataFrame:
    """Per SE block and checkpoint: mean |a| and max of the block's input (the feature map the gate multiplies)
    and of its excited output, the mean gate, the share of the output's mean |a| in its top ``k`` channels
    (medians over probe images), and with a near-1 gate regulariser of weight ``near_one_weight`` its value
    ``weight * mean((1 - gate)**2)`` on the probes and its share of (probe loss + that value), summed over blocks
    in the ``near_one_*`` columns of every row.

    ``blocks``: ``SEBlock``s (``name``, ``spatial``, ``excite``, ``gate``); the input columns are NaN when the
    block's input is not a tapped layer.
    """
    L, C, G = result.layers, result.channels, result.gates
    gc, ex = result.gate_channels, result.extras
    rows = []
    for b in blocks:
        gate = G[G["block"].astype(str) == b.name].groupby("mini_epoch")["mean"].median() if len(G) else \
            pd.Series(dtype=float)
        cols = {"input_mean_abs": _median_stat(L, b.spatial, "mean_abs"), "input_max": _median_stat(L, b.spatial, "max"),
                "output_mean_abs": _median_stat(L, b.excite, "mean_abs"), "output_max": _median_stat(L, b.excite, "max"),
                "gate_mean": gate, "topk_share": topk_share(C, b.excite, k) if len(C) else pd.Series(dtype=float)}
        mes = sorted(set().union(*(s.index for s in cols.values())))
        for m in mes:
            rows.append({"block": b.name, "mini_epoch": int(m), "k": k,
                         **{c: float(s.get(m, math.nan)) for c, s in cols.items()}})
    df = pd.DataFrame(rows, columns=[c for c in SE_SCALE_COLUMNS if not c.startswith("near_one")])
    df["near_one_weight"] = float(near_one_weight)
    reg = pd.Series(dtype=float)
    if near_one_weight and len(gc):
        g = gc.assign(sq=(1.0 - gc["gate"].astype(np.float64)) ** 2)
        reg = near_one_weight * g.groupby(["mini_epoch", "block"], observed=True)["sq"].mean().groupby(
            level="mini_epoch").sum()
    loss = ex.set_index("mini_epoch")["loss"].astype(float) if len(ex) else pd.Series(dtype=float)
    df["near_one_loss"] = df["mini_epoch"].map(reg).astype(float) if len(reg) else math.nan
    df["near_one_share"] = df["near_one_loss"] / (df["mini_epoch"].map(loss).astype(float) + df["near_one_loss"])
    return df[list(SE_SCALE_COLUMNS)]


def near_one_weight_of(manifest: Any) -> float:
    """The near-1 gate regulariser's weight recorded by the built-in trainer (0 when none or unknown)."""
    training = getattr(manifest, "training", None) if not isinstance(manifest, Mapping) else manifest.get("training")
    arch = training.get("arch") if isinstance(training, Mapping) else None
    try:
        return float((arch or {}).get("near_one_weight") or 0.0)
    except (TypeError, ValueError):
        return 0.0


def report_filmstrip(run: Any, result: Any, engine: Any = None) -> Filmstrip | None:
    """The mean-map filmstrip of the layer with spatial maps whose activation scale changed most (first such
    row of the ranked scale table) for the first probe image; None when there is no such layer or the model cannot be built."""
    from core.analysis.diagnose import scale_table, thresholds_for

    table = scale_table(result, run.history(), run.manifest, thresholds_for(run))
    table = table[table["kind"] != "dense"]  # a map per checkpoint needs spatial positions
    if table.empty:
        return None
    if engine is None:
        from core.engine.engine import RunEngine

        engine = RunEngine(run)
    x, _ = run.probes()
    return filmstrip(engine, run.checkpoints(), x[0], str(table["layer"].iloc[0]))
