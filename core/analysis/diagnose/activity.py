"""Rules on activations: NaN/Inf, dead channels."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core.analysis.stats import dead_channel_mask
from core.analysis.diagnose.context import Ctx, Hit, also, at_worst, grouped, worst
from core.analysis.diagnose.model import Finding, pct

#: Layer kinds whose channels can die (rectified outputs; only layers that are never negative are judged).
DEAD_KINDS = frozenset({"activation", "dense", "se_hidden"})


def rule_nan(ctx: Ctx) -> list[Finding]:
    t = ctx.nan_onset
    if t is None:
        return []
    w = ctx.table("weights")
    w_layers: list[str] = []
    n_bad_w = 0
    if len(w):
        bad = w[(w["mini_epoch"] == t) & ((w["n_nan"] > 0) | (w["n_inf"] > 0))]
        pos = {n: i for i, n in enumerate(dict.fromkeys(w["layer"].astype(str)))}
        w_layers = sorted(dict.fromkeys(bad["layer"].astype(str)),
                          key=lambda n: (ctx.depth.get(n, 1e6 + pos.get(n, 0)), pos.get(n, 0)))
        n_bad_w = int(bad["n_nan"].sum() + bad["n_inf"].sum())
    ex = ctx.table("extras")
    if len(ex) and not n_bad_w:
        row = ex[ex["mini_epoch"] == t]
        if len(row):
            n_bad_w = int(row["n_nan_weights"].iloc[0] + row["n_inf_weights"].iloc[0])
    L = ctx.table("layers")
    a_layers: list[str] = []
    n_bad_a = 0
    if len(L):
        bad = L[(L["mini_epoch"] == t) & ((L["n_nan"] > 0) | (L["n_inf"] > 0))]
        a_layers = sorted(dict.fromkeys(bad["layer"].astype(str)), key=ctx.d)
        n_bad_a = int(bad["n_nan"].sum() + bad["n_inf"].sum())
    layers = tuple(dict.fromkeys([*w_layers, *a_layers[:1]]))
    if w_layers or n_bad_w:
        where = f"in the weights of {w_layers[0]}" if w_layers else "in the weights"
        if a_layers:
            where += f", and the activations are non-finite from {a_layers[0]} on"
        layer, page = (w_layers[0] if w_layers else (a_layers[0] if a_layers else "")), "weights"
    else:
        where = f"in the activations of {a_layers[0]} (the weights are still finite: an overflow)"
        layer, page = a_layers[0], "dynamics"
    msg = f"NaN/Inf values first appear at mini-epoch {t} {where}: training diverged there."
    return [Finding("nan_inf", "problem", layers, t, msg,
                    {"n_nonfinite_weights": n_bad_w, "n_nonfinite_activations": n_bad_a,
                     "n_weight_layers": len(w_layers), "n_activation_layers": len(a_layers)},
                    layer=layer, view=ctx.view(page, layer, t))]


def rule_dead(ctx: Ctx) -> list[Finding]:
    th = ctx.th
    C = ctx.table("channels", ["layer", "mini_epoch", "channel", "min", "max"])
    if not len(C):
        return []
    cand = [n for n, k in ctx.kinds.items() if k in DEAD_KINDS and n != ctx.output_tap]
    C = C[C["layer"].astype(str).isin(cand)]
    if not len(C):
        return []
    C = C.assign(layer=C["layer"].astype(str))
    g = dead_channel_mask(C[["mini_epoch", "layer", "channel", "max"]], eps=th.dead_eps)  # the one definition
    never_negative = C.groupby("layer")["min"].min() >= 0  # only rectified outputs are judged
    hits = []
    for layer, df in g.groupby("layer"):
        if not never_negative.get(layer, False):
            continue
        by_me = {int(m): d.set_index("channel")["dead"] for m, d in df.groupby("mini_epoch")
                 if ctx.judged(int(m), layer)}
        mes = sorted(by_me)
        if not mes:
            continue
        n_ch = len(by_me[mes[0]])
        if n_ch < th.dead_min_channels:
            continue
        base_me = mes[0]
        base_dead = set(by_me[base_me].index[by_me[base_me]])
        series = []
        for m in mes:
            dead = set(by_me[m].index[by_me[m]])
            frac = len(dead) / n_ch
            new = frac - len(base_dead) / n_ch  # net growth since the first judged checkpoint
            if frac >= th.dead_problem:
                sev = "problem"
            elif frac >= th.dead_warning:
                sev = "warning"
            else:
                sev = None
            if sev is not None and new < th.dead_growth:  # born dead, not dying: one level lower
                sev = "warning" if sev == "problem" else "info"
            series.append((m, frac, new, sev))
        flagged = [s for s in series if s[3] is not None]
        if not flagged:
            continue
        sev = worst(s[3] for s in flagged)
        onset = next(s for s in flagged if s[3] == sev)  # first checkpoint at the finding's severity
        peak = max(series, key=lambda s: s[1])
        last = series[-1]
        recovered = last[1] < th.dead_warning
        if recovered:  # most channels came back to life by the last checkpoint: transient, one level lower
            sev = {"problem": "warning", "warning": "info", "info": "info"}[sev]
        hits.append(Hit(layer, onset[0], sev, {
            "frac_dead": onset[1], "growth_since_start": onset[2], "frac_dead_start": len(base_dead) / n_ch,
            "start_mini_epoch": base_me, "first_flagged_mini_epoch": flagged[0][0],
            "frac_dead_max": peak[1], "max_mini_epoch": peak[0], "frac_dead_last": last[1],
            "last_mini_epoch": last[0], "recovered": recovered, "n_channels": n_ch, "depth": ctx.d(layer)}))

    def msg(h: Hit, others: list[Hit]) -> str:
        e = h.evidence
        s = (f"From mini-epoch {h.onset}, {pct(e['frac_dead'])} of the channels of {h.layer} "
             f"({round(e['frac_dead'] * e['n_channels'])} of {e['n_channels']}) are zero on every probe image "
             f"(dead ReLUs)")
        if e["growth_since_start"] >= ctx.th.dead_growth:
            s += f", up from {pct(e['frac_dead_start'])} at mini-epoch {e['start_mini_epoch']}"
        elif h.onset > e["start_mini_epoch"]:
            s += f"; most were already dead at mini-epoch {e['start_mini_epoch']}"
        if e["frac_dead_max"] > e["frac_dead"] + 1e-9:
            s += f", and {pct(e['frac_dead_max'])} by mini-epoch {e['max_mini_epoch']}"
        if e["recovered"]:
            s += f", but only {pct(e['frac_dead_last'])} are still dead at mini-epoch {e['last_mini_epoch']}"
        return s + also([o.layer for o in others]) + "."

    return grouped(ctx, "dead_channels", hits, "grid", msg)

