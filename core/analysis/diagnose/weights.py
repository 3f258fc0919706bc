"""Rules on weights: update ratio per step, stalled training."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core.analysis.diagnose.context import Ctx, Hit, also, at_worst, grouped, worst
from core.analysis.diagnose.model import Finding, pct

#: Variables whose update ratio and distance from init are judged (not biases, BN gamma/beta).
KERNEL_NAMES = frozenset({"kernel", "depthwise_kernel", "pointwise_kernel", "embeddings"})


def _steps_between(ctx: Ctx, prev: int, cur: int) -> float:
    a, b = ctx.steps.get(prev), ctx.steps.get(cur)
    if a is None or b is None:
        return math.nan
    return b - a


def rule_update(ctx: Ctx) -> list[Finding]:
    th = ctx.th
    W = ctx.table("weights")
    if not len(W) or not ctx.steps:
        return []
    W = W[W["variable"].astype(str).isin(KERNEL_NAMES)]
    W = W.assign(layer=W["layer"].astype(str))
    mes = ctx.mes
    prev_of = {m: p for p, m in zip(mes, mes[1:])}
    hits = []
    for layer, df in W.groupby("layer"):
        series: dict[str, list[Hit]] = {"high": [], "low": []}
        for _, r in df.sort_values("mini_epoch").iterrows():
            m = int(r["mini_epoch"])
            p = prev_of.get(m)
            if p is None or not ctx.before_nan(m):
                continue
            lr = ctx.lr.get(m, math.nan)
            if math.isfinite(lr) and lr <= 0:
                continue
            steps = _steps_between(ctx, p, m)
            ratio = float(r["update_ratio"])
            if not (math.isfinite(steps) and steps > 0 and math.isfinite(ratio)):
                continue
            per = ratio / steps
            if per > th.update_high:
                d, sev = "high", "problem" if per > th.update_problem_high else "warning"
            elif per < th.update_low:
                d, sev = "low", "warning"
            else:
                continue
            series[d].append(Hit(layer, m, sev, {"per_step": per, "update_ratio": ratio, "steps": steps,
                                                  "depth": ctx.d(layer)}, group=d))
        hits += [h for h in map(at_worst, series.values()) if h is not None]

    def msg(h: Hit, others: list[Hit]) -> str:
        e = h.evidence
        what = "too high: its updates are large against the weights" if h.group == "high" else \
            "too low: the layer barely learns"
        return (f"From mini-epoch {h.onset} the weights of {h.layer} change by {e['per_step']:.1e} of their norm "
                f"per step (about 1e-3 is typical), so its effective learning rate is {what}"
                + also([o.layer for o in others]) + ".")

    return grouped(ctx, "update_ratio", hits, "weights", msg)


def rule_stalled(ctx: Ctx) -> list[Finding]:
    th = ctx.th
    W = ctx.table("weights")
    if not len(W) or th.stall_window < 1:
        return []
    W = W[W["variable"].astype(str).isin(KERNEL_NAMES)]
    W = W.assign(layer=W["layer"].astype(str), d2=W["dist_from_init"].astype(float) ** 2)
    D = W.groupby("mini_epoch")["d2"].sum(min_count=1) ** 0.5
    per_layer = W.pivot_table(index="layer", columns="mini_epoch", values="dist_from_init", aggfunc="first")
    mes = [m for m in ctx.mes if m in D.index and ctx.before_nan(m)]
    ref = math.log(ctx.n_classes) if ctx.n_classes else next(
        (ctx.loss_at(m) for m in mes if m >= 1 and math.isfinite(ctx.loss_at(m))), math.nan)
    if not math.isfinite(ref):
        return []
    for i in range(th.stall_window, len(mes)):
        m, m0 = mes[i], mes[i - th.stall_window]
        if m0 < 1:
            continue
        lr = ctx.lr.get(m, math.nan)
        if math.isfinite(lr) and lr <= 0:
            continue
        d, d0 = float(D[m]), float(D[m0])
        if not (math.isfinite(d) and math.isfinite(d0)):
            continue
        rel = (d - d0) / d if d > 0 else 0.0
        loss = ctx.loss_at(m)
        if not (rel < th.stall_rel and math.isfinite(loss) and loss >= th.stall_loss_frac * ref):
            continue
        chance = ctx.n_classes and loss >= th.stall_chance_frac * math.log(ctx.n_classes)
        with np.errstate(all="ignore"):
            lrel = ((per_layer[m] - per_layer[m0]) / per_layer[m]).replace([np.inf, -np.inf], np.nan).fillna(0)
        stalled = sorted((str(n) for n in lrel.index[lrel < th.stall_rel]), key=ctx.d) or \
            sorted(map(str, per_layer.index), key=ctx.d)
        ref_txt = f"chance level {ref:.3g}" if ctx.n_classes else f"its first value {ref:.3g}"
        msg = (f"From mini-epoch {m} the weights have moved less than {pct(th.stall_rel)} further from their "
               f"initial values over {th.stall_window} mini-epochs while the {ctx.loss_source()} is still "
               f"{loss:.3g} ({pct(loss / ref)} of {ref_txt}): training has stalled, starting with {stalled[0]}.")
        return [Finding("stalled", "problem" if chance else "warning", tuple(stalled), m, msg,
                        {"rel_change": rel, "distance": d, "distance_before": d0, "loss": loss,
                         "loss_reference": ref, "window": th.stall_window},
                        layer=stalled[0], view=ctx.view("weights", stalled[0], m))]
    return []

