"""Rules on BatchNorm: the warm-up (the trap), moving statistics against batch statistics, train/inference gap."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from core.analysis.diagnose.context import Ctx, Hit, also, at_worst, grouped, worst
from core.analysis.diagnose.model import Finding, pct


def rule_bn_warmup(ctx: Ctx) -> list[Finding]:
    """The trap: an info finding that explains the checkpoints the scale/dead/BatchNorm rules do not judge."""
    th = ctx.th
    unwarm = [m for m in ctx.mes if ctx.before_nan(m) and not ctx.warm(m)]
    if not ctx.has_bn or not unwarm:
        return []
    last = unwarm[-1]
    warm_after = [m for m in ctx.mes if m > last and ctx.warm(m)]
    known = last in ctx.steps
    steps = f"{ctx.steps[last]:.0f} optimizer steps at momentum {ctx.bn_momentum:g}" if known else \
        "the optimizer step count is unknown"
    deep = max(ctx.bn_input.values(), key=ctx.d) if ctx.bn_input else (ctx.bn_layers[-1])
    if warm_after:
        tail = f"scale, dead-channel and BatchNorm rules therefore start at mini-epoch {warm_after[0]}"
    elif ctx.nan_onset is not None and ctx.nan_onset > last:
        tail = (f"scale, dead-channel and BatchNorm rules are therefore skipped up to the NaN/Inf at "
                f"mini-epoch {ctx.nan_onset}")
    else:
        tail = ("scale, dead-channel and BatchNorm rules are therefore skipped for this run "
                "(train longer, or compare the train-mode loss)")
    span = "At mini-epoch 0" if last == 0 else f"Up to mini-epoch {last} ({steps})"
    msg = (f"{span} the BatchNorm moving statistics still hold more than {pct(th.bn_init_share)} of their "
           f"initial values, so inference-mode activations of deep layers such as {deep} look far too small "
           f"there; this is expected, not a collapse, and {tail}.")
    ev = {"last_unjudged_mini_epoch": last, "momentum": ctx.bn_momentum,
          "steps": ctx.steps.get(last, math.nan),
          "init_share": max((ctx.bn_share.get((l, last), math.nan) for l in ctx.bn_layers), default=math.nan)}
    return [Finding("bn_stat_mismatch", "info", (*ctx.bn_layers, deep), 0, msg, ev, layer=deep,
                    view=ctx.view("dynamics", deep, 0))]


def rule_bn_stats(ctx: Ctx) -> list[Finding]:
    """Moving statistics far from the probe batch's statistics, per BatchNorm layer."""
    th = ctx.th
    bn = ctx.table("bn_batch")
    hits = []
    if len(bn):
        for layer, df in bn.assign(layer=bn["layer"].astype(str)).groupby("layer"):
            for _, r in df.sort_values("mini_epoch").iterrows():
                m = int(r["mini_epoch"])
                if not ctx.judged(m, layer):  # this layer and every BatchNorm before it warm
                    continue
                shift, ratio = float(r["mean_shift"]), float(r["var_ratio"])
                bad = shift > th.bn_mean_shift or not (th.bn_var_low <= ratio <= th.bn_var_high)
                if not bad:
                    continue
                severe = shift > th.bn_problem_mean_shift or not (
                    th.bn_problem_var_low <= ratio <= th.bn_problem_var_high)
                hits.append(Hit(layer, m, "problem" if severe else "warning", {
                    "mean_shift": shift, "var_ratio": ratio, "init_share": ctx.bn_share.get((layer, m), math.nan),
                    "depth": ctx.d(layer)}))
                break

    def msg(h: Hit, others: list[Hit]) -> str:
        e = h.evidence
        return (f"From mini-epoch {h.onset} the moving statistics of {h.layer} no longer match the probe batch "
                f"(batch mean {e['mean_shift']:.2g} moving std away, batch/moving variance "
                f"{e['var_ratio']:.2g}), so its inference-mode outputs are off" + also([o.layer for o in others])
                + ".")

    return grouped(ctx, "bn_stat_mismatch", hits, "weights", msg)


def _mode_gaps(ctx: Ctx, chance: float) -> dict[int, tuple[float, float, float, float, float, str | None]]:
    """Per checkpoint from mini-epoch 1: (inference loss, train-mode loss, gap, relative gap, share of what
    was learned that inference mode loses, severity or None)."""
    th = ctx.th
    gaps = {}
    for m in ctx.mes:
        if m < 1 or not ctx.before_nan(m):
            continue
        a, b = ctx.probe_loss.get(m, math.nan), ctx.probe_loss_train.get(m, math.nan)
        if not (math.isfinite(a) and math.isfinite(b)):
            continue
        gap = abs(a - b)
        rel = gap / max(b, th.bn_gap_floor)
        learned = chance - b
        lost = (a - b) / learned if math.isfinite(learned) and learned >= th.bn_gap_min_learned else math.nan
        big = rel >= th.bn_gap_rel and gap >= th.bn_gap_abs
        if not ctx.warm(m):  # warming up: only a large gap that lasts to the end is reported
            sev = "warning" if big else None
        elif rel >= th.bn_gap_problem_rel and gap >= th.bn_gap_problem_abs or lost >= th.bn_gap_problem_lost:
            sev = "problem"
        else:
            sev = "warning" if big or lost >= th.bn_gap_lost else None
        gaps[m] = (a, b, gap, rel, lost, sev)
    return gaps


def rule_bn_gap(ctx: Ctx) -> list[Finding]:
    """Train-mode against inference-mode loss on the probes."""
    th = ctx.th
    if not ctx.has_bn:
        return []
    # chance-level loss: ln(classes), else the probe loss of the first checkpoint (the initial weights)
    chance = math.log(ctx.n_classes) if ctx.n_classes else (
        ctx.probe_loss.get(ctx.mes[0], math.nan) if ctx.mes else math.nan)
    gaps = _mode_gaps(ctx, chance)
    out: list[Finding] = []
    layer = ctx.bn_layers[0]
    warm_hits = [m for m, g in gaps.items() if g[5] and ctx.warm(m)]
    if warm_hits:
        m = warm_hits[0]
        a, b, gap, rel, lost, sev = gaps[m]
        extra = (f", losing {pct(min(lost, 9.99))} of what the network learned over chance"
                 if math.isfinite(lost) and lost >= th.bn_gap_lost else "")
        out.append(Finding(
            "bn_mode_gap", sev, tuple(ctx.bn_layers), m,
            f"At mini-epoch {m} the probe loss in inference mode ({a:.3g}) differs from the loss with batch "
            f"statistics ({b:.3g}) by {pct(rel)}{extra}: BatchNorm behaves differently at inference than in "
            f"training.",
            {"loss": a, "loss_train_mode": b, "gap": gap, "rel_gap": rel, "frac_learned_lost": lost,
             "chance_loss": chance},
            layer=layer, view=ctx.view("overview", layer, m)))
    elif gaps and gaps[max(gaps)][5] and not ctx.warm(max(gaps)):
        # still warming up at the end of the run: expected, but the inference outputs are not usable yet
        last = max(gaps)
        onset = last
        for m in sorted(gaps, reverse=True):
            if not gaps[m][5]:
                break
            onset = m
        a, b, gap, rel, _, _ = gaps[last]
        shares = {l: ctx.bn_share.get((l, last), math.nan) for l in ctx.bn_layers}
        slow = max(shares, key=lambda l: shares[l] if math.isfinite(shares[l]) else -1)
        share = shares[slow]
        why = (f"{pct(share)} of the moving variance of {slow} is still its initial value"
               if math.isfinite(share) else "the moving statistics have had too few steps")
        va, ta = ctx.val_acc.get(last, math.nan), ctx.train_acc.get(last, math.nan)
        if math.isfinite(va) and math.isfinite(ta):
            why += f"; validation accuracy {va:.3g} against training accuracy {ta:.3g}"
        out.append(Finding(
            "bn_mode_gap", "warning", tuple(ctx.bn_layers), onset,
            f"From mini-epoch {onset} to the last checkpoint ({last}) the probe loss in inference mode "
            f"({a:.3g} at the end) is far above the loss with batch statistics ({b:.3g}) because the BatchNorm "
            f"moving statistics have not caught up ({why}): inference outputs and validation metrics of these "
            f"checkpoints are not meaningful yet; train longer or lower the BatchNorm momentum.",
            {"loss": a, "loss_train_mode": b, "gap": gap, "rel_gap": rel, "init_share": share,
             "last_mini_epoch": last}, layer=slow, view=ctx.view("overview", slow, last)))
    return out

