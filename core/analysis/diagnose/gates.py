"""Rules on SE gates: switched off, pinned open, piled at 0.5, and their product along the trunk."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core.analysis.diagnose.context import Ctx, Hit, also, at_worst, grouped, worst
from core.analysis.diagnose.model import Finding, pct


def _gate_spread(ctx: Ctx) -> dict[tuple[int, str], float]:
    """(mini_epoch, block) -> how much the gate logits depend on the input (median over channels)."""
    gc = ctx.table("gate_channels")
    if not len(gc):
        return {}
    gc = gc.copy()
    logit = gc["logit"].astype(float)
    # without logits, gate/0.25 bounds the logit change from the gate change (sigmoid slope <= 1/4)
    gc["v"] = np.where(np.isfinite(logit), logit, gc["gate"].astype(float) / 0.25)
    n_probes = gc["probe"].nunique()
    out = {}
    if n_probes >= 2:
        sd = gc.groupby(["mini_epoch", "block", "channel"], observed=True)["v"].std(ddof=0)
        med = sd.groupby(level=["mini_epoch", "block"], observed=True).median()
    else:  # one probe: constant across channels is the only sign left
        med = gc.groupby(["mini_epoch", "block"], observed=True)["v"].std(ddof=0)
    for (m, b), v in med.items():
        out[(int(m), str(b))] = float(v)
    return out


def _gate_fractions(ctx: Ctx) -> pd.DataFrame:
    """Per (block, mini_epoch): fractions of gates off/open/half (thresholds from ``ctx.th``, computed per
    probe from ``gate_channels``; the sweep's fixed-threshold ``gates`` table otherwise), mean over probes."""
    th = ctx.th
    gc = ctx.table("gate_channels")
    cols = ["frac_low", "frac_high", "frac_half", "mean"]
    if len(gc):
        g = gc["gate"].to_numpy(np.float64)
        ok = np.isfinite(g)
        df = pd.DataFrame({"block": gc["block"].astype(str), "mini_epoch": gc["mini_epoch"].astype(int),
                           "probe": gc["probe"], "ok": ok,
                           "frac_low": ok & (g < th.gate_low), "frac_high": ok & (g > th.gate_high),
                           "frac_half": ok & (np.abs(g - 0.5) <= th.gate_half_tol + 1e-7),
                           "mean": np.where(ok, g, 0.0)})
        per = df.groupby(["block", "mini_epoch", "probe"])[["ok", *cols]].sum()
        per[cols] = per[cols].div(per["ok"].where(per["ok"] > 0), axis=0)
        return per[cols].groupby(level=["block", "mini_epoch"]).mean().reset_index()
    G = ctx.table("gates")
    if not len(G):
        return pd.DataFrame()
    return G.groupby(["block", "mini_epoch"], observed=True)[cols].mean().reset_index()


def rule_gates(ctx: Ctx) -> list[Finding]:
    th = ctx.th
    agg = _gate_fractions(ctx)
    if not len(agg):
        return []
    agg["block"] = agg["block"].astype(str)
    spread = _gate_spread(ctx)
    hits: dict[str, list[Hit]] = {"gates_off": [], "gates_open": [], "gates_half": []}
    for block, df in agg.groupby("block"):
        df = df.sort_values("mini_epoch")
        series: dict[str, list[Hit]] = {k: [] for k in hits}
        for _, r in df.iterrows():
            m = int(r["mini_epoch"])
            if not ctx.before_nan(m) or (m == 0 and ctx.has_bn):  # BN models: the mini-epoch-0 trap
                continue
            sp = spread.get((m, block), math.nan)
            checks = (
                ("gates_off", r["frac_low"], "warning", "problem"),
                ("gates_open", r["frac_high"], "info", "warning"),
                ("gates_half", r["frac_half"] if (math.isfinite(sp) and sp <= th.gate_const_tol) else 0.0,
                 "warning", "warning"),
            )
            for kind, frac, sev_lo, sev_hi in checks:
                if not (frac >= th.gate_frac):
                    continue
                sev = sev_hi if frac >= th.gate_frac_severe else sev_lo
                series[kind].append(Hit(block, m, sev, {"frac": float(frac), "mean_gate": float(r["mean"]),
                                                         "logit_spread": sp, "depth": ctx.d(block)}))
        for kind, ser in series.items():
            h = at_worst(ser)
            if h is not None:
                hits[kind].append(h)

    texts = {
        "gates_off": lambda h: (f"From mini-epoch {h.onset}, {pct(h.evidence['frac'])} of the SE gates of "
                                f"{h.layer} are below {th.gate_low:g} (mean gate {h.evidence['mean_gate']:.3g}): "
                                f"the block switches its channels off"),
        "gates_open": lambda h: (f"From mini-epoch {h.onset}, {pct(h.evidence['frac'])} of the SE gates of "
                                 f"{h.layer} are above {th.gate_high:g}: the block passes its input unchanged, "
                                 f"so the SE block does nothing"),
        "gates_half": lambda h: (f"From mini-epoch {h.onset}, {pct(h.evidence['frac'])} of the SE gates of "
                                 f"{h.layer} sit at 0.5 and do not depend on the input: the squeeze path is "
                                 f"dead and the block only halves its input"),
    }
    out = []
    for kind, hs in hits.items():
        out += grouped(ctx, kind, hs, "gates",
                        lambda h, others, kind=kind: texts[kind](h) + also([o.layer for o in others]) + ".")
    return out


def rule_gate_product(ctx: Ctx) -> list[Finding]:
    th = ctx.th
    G = ctx.table("gates")
    if not len(G) or G["block"].nunique() < 2:
        return []
    G = G.copy()
    G["block"] = G["block"].astype(str)
    G["logm"] = np.log(np.clip(G["mean"].astype(float), 1e-30, None))
    for m in sorted(G["mini_epoch"].unique()):
        m = int(m)
        if not ctx.before_nan(m):
            continue
        g = G[G["mini_epoch"] == m]
        per_probe = g.groupby("probe")["logm"].sum()
        prod = float(np.exp(np.median(per_probe)))
        if prod < th.gate_product_warning:
            sev = "problem" if prod < th.gate_product_problem else "warning"
            means = g.groupby("block")["mean"].median().sort_values()
            blocks = tuple(sorted(means.index, key=ctx.d))
            weakest = str(means.index[0])
            msg = (f"At mini-epoch {m} the product of the mean SE gates along the trunk is {prod:.1e}: the "
                   f"SE blocks attenuate the signal about {1 / prod:.0e}x in total, most of it in {weakest} "
                   f"(mean gate {means.iloc[0]:.3g}).")
            return [Finding("gate_product", sev, blocks, m, msg,
                            {"product": prod, "weakest_mean_gate": float(means.iloc[0]), "n_blocks": len(blocks)},
                            layer=weakest, view=ctx.view("gates", weakest, m))]
    return []

