"""Channel inspector: the probes that drive a channel, their ranks over time, first-layer filters, worst probes."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from core.analysis.sweep import output_tap  # re-exported: the tap holding the model output

RANK_BY = {"mean": "channel mean", "max": "channel max", "mean_abs": "mean |x|", "std": "channel std"}


# ---------------------------------------------------------------------------------------------------
# rankings from the sweep's ``channels`` table


def _channel_rows(channels: pd.DataFrame, layer: str, channel: int, by: str) -> pd.DataFrame:
    if by not in RANK_BY:
        raise ValueError(f"rank by one of {list(RANK_BY)}, got {by!r}")
    if channels is None or channels.empty:
        return pd.DataFrame(columns=["mini_epoch", "probe", "value"])
    m = (channels["layer"].astype(str) == layer) & (channels["channel"] == channel)
    d = channels.loc[m, ["mini_epoch", "probe", by]].rename(columns={by: "value"})
    d["mini_epoch"] = d["mini_epoch"].astype("int64")
    d["probe"] = d["probe"].astype("int64")
    return d.sort_values(["mini_epoch", "probe"]).reset_index(drop=True)


def _ranked(d: pd.DataFrame) -> pd.DataFrame:
    """Rank within each mini-epoch: 1 = highest value; ties by probe index; NaN last."""
    d = d.sort_values(["mini_epoch", "probe"]).reset_index(drop=True)
    d["rank"] = d.groupby("mini_epoch")["value"].rank(method="first", ascending=False,
                                                      na_option="bottom").astype("int64")
    return d


def channel_ranking(channels: pd.DataFrame, layer: str, channel: int, mini_epoch: int,
                    by: str = "mean") -> pd.DataFrame:
    """Probes ordered by how much they activate ``layer``/``channel`` at ``mini_epoch``.

    channels: the sweep's ``channels`` table. Returns probe, value (the ``by`` statistic
    of that channel for that probe), rank (1 = most active; ties by probe index; NaN last).
    """
    d = _channel_rows(channels, layer, channel, by)
    d = d[d["mini_epoch"] == mini_epoch]
    if d.empty:
        return pd.DataFrame(columns=["probe", "value", "rank"])
    return _ranked(d).sort_values("rank")[["probe", "value", "rank"]].reset_index(drop=True)


def rank_trajectories(channels: pd.DataFrame, layer: str, channel: int, by: str = "mean") -> pd.DataFrame:
    """Every probe's rank for ``layer``/``channel`` at every checkpoint: mini_epoch, probe, value, rank."""
    d = _channel_rows(channels, layer, channel, by)
    if d.empty:
        return pd.DataFrame(columns=["mini_epoch", "probe", "value", "rank"])
    return _ranked(d)[["mini_epoch", "probe", "value", "rank"]]


def rank_stability(traj: pd.DataFrame, k: int, reference: int) -> pd.DataFrame:
    """Per checkpoint: how many of the top-``k`` probes at ``reference`` are still in the top ``k`` (overlap)."""
    if traj.empty:
        return pd.DataFrame(columns=["mini_epoch", "overlap", "fraction"])
    top = set(traj[(traj["mini_epoch"] == reference) & (traj["rank"] <= k)]["probe"])
    g = traj[traj["rank"] <= k].groupby("mini_epoch")["probe"].agg(lambda p: len(top & set(p)))
    out = g.rename("overlap").reset_index()
    out["fraction"] = out["overlap"] / max(len(top), 1)
    return out


# ---------------------------------------------------------------------------------------------------
# first-layer filters


def first_conv_kernel(weights: Mapping[str, np.ndarray], layer_order: Sequence[str] = ()
                      ) -> tuple[str, np.ndarray] | None:
    """The first conv kernel that reads the image: (variable path, kernel (kh, kw, in, out)) with in 1 or 3.

    Layers are tried in ``layer_order`` (tap depth order) first, then in the weights' own
    order; None when there is no such kernel.
    """
    def ok(k: str) -> bool:
        a = weights.get(k)
        return a is not None and a.ndim == 4 and a.shape[2] in (1, 3)

    for layer in layer_order:
        k = f"{layer}/kernel"
        if ok(k):
            return k, np.asarray(weights[k])
    for k in weights:
        if k.endswith("/kernel") and ok(k):
            return k, np.asarray(weights[k])
    return None


def filter_rgb(kernel: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None) -> np.ndarray:
    """Kernel (kh, kw, in, out) -> float (out, kh, kw, 3) in [0, 1], each filter min-max normalised.

    ``lo``/``hi`` (each (out,)) override the per-filter range (e.g. the range over every
    checkpoint). A constant filter becomes mid-grey; NaN stays NaN. ``in`` = 1 gives grey.
    """
    k = np.moveaxis(np.asarray(kernel, np.float64), -1, 0)  # (out, kh, kw, in)
    if k.shape[-1] == 1:
        k = np.repeat(k, 3, axis=-1)
    if k.shape[-1] != 3:
        raise ValueError(f"filters need 1 or 3 input channels, got {k.shape[-1]}")
    flat = k.reshape(len(k), -1)
    fin = np.isfinite(flat)
    with np.errstate(all="ignore"):
        if lo is None:
            lo = np.where(fin.any(1), np.where(fin, flat, np.inf).min(1), np.nan)
        if hi is None:
            hi = np.where(fin.any(1), np.where(fin, flat, -np.inf).max(1), np.nan)
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        span = (hi - lo)[:, None, None, None]
        x = np.where(span > 0, (k - lo[:, None, None, None]) / np.where(span > 0, span, 1.0), 0.5)
    x = np.clip(x, 0.0, 1.0)
    x[~np.isfinite(k)] = np.nan
    return x


def filter_ranges(kernels: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per filter, min and max over several checkpoints' kernels (each (kh, kw, in, out)) -> (lo, hi) (out,)."""
    stack = np.stack([np.moveaxis(np.asarray(k, np.float64), -1, 0).reshape(k.shape[-1], -1) for k in kernels],
                     axis=1)  # (out, T, n)
    flat = stack.reshape(stack.shape[0], -1)
    fin = np.isfinite(flat)
    lo = np.where(fin.any(1), np.where(fin, flat, np.inf).min(1), np.nan)
    hi = np.where(fin.any(1), np.where(fin, flat, -np.inf).max(1), np.nan)
    return lo, hi


def read_kernel(run, checkpoints: Sequence, path: str) -> list[tuple[int, np.ndarray]]:
    """One weight variable (e.g. ``stem_conv/kernel``) at each checkpoint: [(mini_epoch, array)].

    Our own npz checkpoints are read one array at a time; foreign checkpoints are read whole.
    Checkpoints that cannot be read are skipped.
    """
    from core.run.runs import RunError

    out = []
    for c in checkpoints:
        try:
            if c.kind == "npz":
                with np.load(c.path, allow_pickle=False) as z:
                    if path not in z.files:
                        continue
                    out.append((c.mini_epoch, np.asarray(z[path])))
            else:
                w = run.read_weights(c)
                if path in w:
                    out.append((c.mini_epoch, np.asarray(w[path])))
        except (RunError, OSError, ValueError, KeyError, EOFError):
            continue
    return out


# ---------------------------------------------------------------------------------------------------
# predictions on the probe set


def to_probabilities(out: np.ndarray) -> np.ndarray:
    """Model output (N, K) -> probabilities: kept when rows already sum to 1 in [0, 1], else softmax.

    A single sigmoid unit (N, 1) becomes two classes [1 - p, p].
    """
    o = np.asarray(out, np.float64).reshape(len(out), -1)
    if o.shape[1] == 1:
        p = o if ((o >= 0) & (o <= 1)).all() else 1.0 / (1.0 + np.exp(-o))
        return np.concatenate([1.0 - p, p], axis=1)
    if np.isfinite(o).all() and (o >= 0).all() and (o <= 1).all() and np.allclose(o.sum(1), 1.0, atol=1e-3):
        return o
    z = o - np.nanmax(o, axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def prediction_table(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str] = ()) -> pd.DataFrame:
    """One row per probe: probe, label, label_name, pred, pred_name, p_true, p_pred, loss, correct.

    probs (N, K) probabilities, labels (N,) (-1 = unknown: p_true and loss NaN). ``loss``
    is the cross-entropy -log p_true (p clipped at 1e-12). A labelled probe whose output
    is not finite gets pred -1, p_true NaN and loss +inf (as wrong as it gets).
    """
    p = np.asarray(probs, np.float64)
    y = np.asarray(labels, np.int64)
    n, k = p.shape
    names = list(class_names)

    def name(i: int) -> str:
        return names[i] if 0 <= i < len(names) else (str(i) if i >= 0 else "?")

    finite = np.isfinite(p).all(axis=1)
    pred = np.where(finite, np.argmax(np.where(finite[:, None], p, 0.0), axis=1), -1)
    known = (y >= 0) & (y < k)
    p_true = np.where(known & finite, p[np.arange(n), np.clip(y, 0, k - 1)], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = np.where(known, np.where(finite, -np.log(np.clip(p_true, 1e-12, 1.0)), np.inf), np.nan)
    p_pred = np.where(finite, p[np.arange(n), np.clip(pred, 0, k - 1)], np.nan)
    return pd.DataFrame({"probe": np.arange(n), "label": y, "label_name": [name(int(i)) for i in y],
                         "pred": pred, "pred_name": [name(int(i)) for i in pred], "p_true": p_true,
                         "p_pred": p_pred, "loss": loss, "correct": known & finite & (pred == y)})


def most_wrong(table: pd.DataFrame, k: int = 8) -> pd.DataFrame:
    """The ``k`` labelled probes with the highest loss (lowest probability of the true class); ties by probe."""
    d = table[table["label"] >= 0]
    d = d.sort_values(["loss", "probe"], ascending=[False, True], kind="stable")
    return d.head(k).reset_index(drop=True)


def predict_probes(engine, ckpt, images: np.ndarray) -> np.ndarray:
    """Probabilities (N, K) of uint8 ``images`` at checkpoint ``ckpt``: one forward pass of the engine.

    Uses the engine's reduced forward pass with the same raw taps as the sweep (no new trace).
    """
    from core.analysis.sweep import raw_taps

    out = output_tap(engine)
    if out is None:
        raise ValueError("the model's output layer is not among the extracted taps; cannot predict")
    wv = engine.weight_values(engine.read_weights(ckpt))
    _, acts = engine.extractor.run_reduced(wv, engine.preprocess(images), raw=tuple(raw_taps(engine, out)))
    return to_probabilities(acts[out])


def accuracy_of(table: pd.DataFrame) -> float:
    """Fraction of labelled probes predicted correctly (NaN without labels)."""
    known = table["label"] >= 0
    return float(table.loc[known, "correct"].mean()) if known.any() else math.nan
