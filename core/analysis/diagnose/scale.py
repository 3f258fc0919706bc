"""Activation scale over training: the ranked table of scale changes and the collapse/explosion rule.

One function (:func:`scale_rows`) computes, for every judged tap, its std (median over probe
images) at the **baseline** (its first judged checkpoint: mini-epoch 0 only when no BatchNorm
precedes it, see the BatchNorm trap in ``context``), at the last checkpoint, at its minimum and
maximum, the shrink and growth factors against the baseline and the onset (first checkpoint where
the factor reaches ``Thresholds.scale_factor``). The Overview table and the findings both read it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from core.analysis.diagnose.context import SCALE_KINDS, Ctx, Hit, grouped
from core.analysis.diagnose.model import Finding, Thresholds

SCALE_COLUMNS = ("layer", "kind", "depth", "direction", "change", "onset", "baseline_mini_epoch", "std_baseline",
                 "std_last", "std_min", "min_mini_epoch", "std_max", "max_mini_epoch", "shrink", "growth",
                 "mean_abs_baseline", "mean_abs_last", "last_mini_epoch", "std_series", "rank", "group")


def _median_over_probes(ctx: Ctx, stat: str) -> pd.DataFrame:
    """Median over probes of a layer statistic: index layer, columns mini_epoch."""
    L = ctx.table("layers")
    if not len(L) or stat not in L:
        return pd.DataFrame()
    s = L.groupby(["layer", "mini_epoch"], observed=True)[stat].median().unstack("mini_epoch")
    s.index = s.index.astype(str)
    return s


def ratio(a: float, b: float) -> float:
    """a / b with 0 / 0 = 1 and a / 0 = inf (a dead layer's std of 0 is an infinite shrink)."""
    if b > 0:
        return a / b
    return math.inf if a > 0 else 1.0


def _onset(series: list[tuple[int, float]], base: float, factor: float, shrink: bool) -> int | None:
    return next((m for m, s in series if (ratio(base, s) if shrink else ratio(s, base)) >= factor), None)


def _row(ctx: Ctx, layer: str, std: pd.Series, mabs: pd.Series | None) -> dict[str, Any] | None:
    th = ctx.th
    judged = [(m, float(std[m])) for m in ctx.mes
              if m in std.index and ctx.judged(m, layer) and math.isfinite(float(std[m]))]
    if len(judged) < 2:
        return None
    (m0, base), after = judged[0], judged[1:]
    lo = min(after, key=lambda x: x[1])
    hi = max(after, key=lambda x: x[1])
    shrink, growth = ratio(base, lo[1]), ratio(hi[1], base)
    direction = "shrink" if shrink >= growth else "growth"
    onset = _onset(after, base, th.scale_factor, direction == "shrink")
    ma = (lambda m: float(mabs.get(m, math.nan))) if mabs is not None else (lambda m: math.nan)
    return {"layer": layer, "kind": ctx.kinds.get(layer, "other"), "depth": ctx.d(layer), "direction": direction,
            "change": max(shrink, growth), "onset": -1 if onset is None else onset, "baseline_mini_epoch": m0,
            "std_baseline": base, "std_last": after[-1][1], "std_min": lo[1], "min_mini_epoch": lo[0],
            "std_max": hi[1], "max_mini_epoch": hi[0], "shrink": shrink, "growth": growth,
            "mean_abs_baseline": ma(m0), "mean_abs_last": ma(after[-1][0]), "last_mini_epoch": after[-1][0],
            "std_series": [float(std[m]) if m in std.index else math.nan for m in ctx.mes]}


def scale_rows(ctx: Ctx) -> pd.DataFrame:
    """The ranked scale-change table (columns :data:`SCALE_COLUMNS`), largest change first.

    Layers whose change reaches ``scale_factor`` in the same direction at the same onset form a
    ``group`` (one finding): groups are ranked by their largest change and list their layers in
    depth order, so the first row of a group is where the change starts. Layers below the
    threshold follow, by change. ``onset`` is -1 where the threshold is not reached.
    """
    S = _median_over_probes(ctx, "std")
    if not len(S):
        return pd.DataFrame(columns=SCALE_COLUMNS)
    A = _median_over_probes(ctx, "mean_abs")
    rows = []
    for layer in S.index:
        if ctx.kinds.get(layer, "other") not in SCALE_KINDS or layer == ctx.output_tap:
            continue
        r = _row(ctx, layer, S.loc[layer], A.loc[layer] if layer in A.index else None)
        if r is not None:
            rows.append(r)
    if not rows:
        return pd.DataFrame(columns=SCALE_COLUMNS)
    df = pd.DataFrame(rows)
    crossed = df["onset"] >= 0
    df["group"] = np.where(crossed, df["direction"] + "@" + df["onset"].astype(str), "")
    # crossing groups by their largest change, then depth; the rest by change (equal _key, _depth)
    df["_key"] = df.groupby("group")["change"].transform("max").where(crossed, -np.inf)
    df["_depth"] = df["depth"].where(crossed, 0.0)
    df = df.sort_values(["_key", "group", "_depth", "change", "depth"],
                        ascending=[False, True, True, False, True], kind="stable")
    df["rank"] = np.arange(1, len(df) + 1)
    return df[list(SCALE_COLUMNS)].reset_index(drop=True)


def scale_table(result, history: pd.DataFrame | None = None, manifest: Any = None,
                thresholds: Thresholds = Thresholds()) -> pd.DataFrame:
    """:func:`scale_rows` for a sweep result (what the Overview shows)."""
    return scale_rows(Ctx(result, history, manifest, thresholds))


def rule_scale(ctx: Ctx) -> list[Finding]:
    th = ctx.th
    T = scale_rows(ctx)
    hits: dict[str, list[Hit]] = {"activation_collapse": [], "activation_explosion": []}
    S = _median_over_probes(ctx, "std")
    for r in T[T["onset"] >= 0].itertuples(index=False):
        m = int(r.onset)
        s = float(S.loc[r.layer, m])
        kind = "activation_collapse" if r.direction == "shrink" else "activation_explosion"
        f = ratio(r.std_baseline, s) if kind == "activation_collapse" else ratio(s, r.std_baseline)
        prev = [p for p in ctx.mes if p < m]
        lb = ctx.loss_at(prev[-1]) if prev else math.nan
        la = ctx.loss_at(m)
        rose = bool(math.isfinite(lb) and math.isfinite(la) and la > lb * (1 + th.loss_rise))
        severe = kind == "activation_collapse" or r.change >= th.scale_problem_factor or rose
        peak_me = r.min_mini_epoch if kind == "activation_collapse" else r.max_mini_epoch
        hits[kind].append(Hit(r.layer, m, "problem" if severe else "warning", {
            "factor": f, "std": s, "reference_std": r.std_baseline, "baseline_mini_epoch": r.baseline_mini_epoch,
            "factor_max": r.change, "max_mini_epoch": peak_me, "std_last": r.std_last,
            "depth": ctx.d(r.layer), "loss_before": lb, "loss_at": la, "loss_rose": rose}))
    out = []
    for kind, hs in hits.items():
        word = "collapses" if kind == "activation_collapse" else "explodes"
        rel = "below" if kind == "activation_collapse" else "above"

        def msg(h: Hit, others: list[Hit], word=word, rel=rel) -> str:
            e = h.evidence
            s = (f"At mini-epoch {h.onset} the activation scale {word} from {h.layer} on (depth "
                 f"{int(e['depth'])}): its std is {e['factor']:.1f}x {rel} its level at mini-epoch "
                 f"{e['baseline_mini_epoch']} ({e['reference_std']:.3g} -> {e['std']:.3g}, "
                 f"{e['factor_max']:.1f}x by mini-epoch {e['max_mini_epoch']})")
            if others:
                s += (f", and {len(others)} deeper layer{'s follow' if len(others) > 1 else ' follows'} at the "
                      f"same time")
                top = max(others, key=lambda o: o.evidence["factor_max"])
                if top.evidence["factor_max"] > e["factor_max"]:
                    s += f" (up to {top.evidence['factor_max']:.0f}x in {top.layer})"
            if math.isfinite(e["loss_at"]) and math.isfinite(e["loss_before"]):
                src = ctx.loss_source()
                s += (f"; the {src} rose at the same time ({e['loss_before']:.3g} -> {e['loss_at']:.3g})"
                      if e["loss_rose"] else f"; the {src} did not rise ({e['loss_before']:.3g} -> "
                                              f"{e['loss_at']:.3g})")
            return s + "."

        out += grouped(ctx, kind, hs, "dynamics", msg, by_severity=False)
    return out
