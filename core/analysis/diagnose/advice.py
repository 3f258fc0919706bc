"""What usually causes each kind of finding, what to try, and one sentence read from the run that tells
the causes apart (see the sections of docs/diagnostics.md)."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import pandas as pd

from core.analysis.diagnose.context import Ctx
from core.analysis.diagnose.model import Advice, Finding

#: kind -> (what usually causes it, what to try)
TEXTS: dict[str, tuple[str, str]] = {
    "input_scaling": ("the probe images are scaled unlike the training data (raw 0-255 into a model trained on "
                      "[0, 1], a missing mean/std, RGB/BGR), often because an imported run's scaling is a guess",
                      "set the run's pixel scaling (import --preprocessing, or Pixel scaling in the sidebar) and "
                      "look at the findings again"),
    "nan_inf": ("a learning rate too high for the loss scale, an exploding layer, or a log/division of zero "
                "in a loss or layer",
                "resume from the last finite checkpoint with a lower learning rate or a warm-up, clip gradients "
                "(clipnorm), check the inputs for NaN"),
    "dead_channels": ("large updates (a high learning rate or a learning-rate spike) push ReLU inputs below zero "
                      "for every image; strong weight decay or a negative bias drift; narrow layers can be born dead",
                      "lower the learning rate or add a warm-up, use LeakyReLU/ELU/GELU, put BatchNorm before the "
                      "ReLU, reduce L2"),
    "activation_collapse": ("weight decay (L2) shrinking the weights of layers that no normalisation rescales; "
                            "SE gates or other multiplicative paths attenuating the signal; channels dying",
                            "reduce L2 or use decoupled weight decay (AdamW), add BatchNorm after the convolutions, "
                            "check the SE gates page and the dead channels on the Channel grid"),
    "activation_explosion": ("a learning rate too high, no normalisation, residual branches adding up, gates "
                             "pinned open",
                             "lower the learning rate or add a warm-up, clip gradients, add BatchNorm, scale "
                             "residual branches down"),
    "gates_off": ("a negative excitation bias (initial or learned) or strong weight decay on the excitation layer: "
                  "the block multiplies its channels by ~0",
                  "initialise the excitation bias at 0 (gates 0.5) or above, pull the gates towards 1 with a small "
                  "near-1 regulariser, lower the learning rate"),
    "gates_open": ("a positive excitation bias or a near-1 regulariser that dominates: the block has learned to "
                   "be an identity",
                   "usually harmless; if the SE block should help, weaken the near-1 regulariser or drop the block"),
    "gates_half": ("a dead squeeze path: every hidden ReLU of the SE block is dead or its weights decayed to zero, "
                   "so the gate is sigmoid(bias) whatever the image",
                   "less L2 on the SE layers, a leaky activation in the squeeze path, a wider squeeze (smaller "
                   "ratio)"),
    "gate_product": ("several SE blocks each passing part of the signal; without residual shortcuts their "
                     "product attenuates the deep layers",
                     "inspect each block on the SE gates page; put SE blocks inside residual branches, initialise "
                     "gates towards 1"),
    "bn_stat_mismatch": ("moving averages that lag fast-changing weights (high learning rate, high momentum), "
                         "small or unrepresentative batches, or probe images preprocessed differently from "
                         "training; early in training simply the initial values (mean 0, variance 1)",
                         "lower the BatchNorm momentum for short runs, use larger batches, check the probes' "
                         "preprocessing, judge only checkpoints after the warm-up"),
    "bn_mode_gap": ("BatchNorm moving statistics that do not match the batch statistics the network was trained "
                    "with (momentum too high for the run length, small batches, distribution shift)",
                    "lower the BatchNorm momentum, train longer, use larger batches, or recompute the moving "
                    "statistics with a pass over training data"),
    "update_ratio": ("a learning rate too high (large updates against the weights) or too low (the layer barely "
                     "moves; also frozen layers or vanishing gradients)",
                     "tune the learning rate (about 1e-3 of the weight norm per step is typical), add a warm-up, "
                     "check the gradient norms"),
    "stalled": ("a learning rate too low or decayed to zero, a network whose units are mostly dead, or "
                "vanishing gradients",
                "raise the learning rate, check dead channels and gradient norms, check the schedule"),
}


def _arch_sentence(ctx: Ctx) -> str:
    a = ctx.facts.arch
    if not a:
        return ""
    parts = [f"BatchNorm {'on' if a.get('batchnorm') else 'off'}"] if "batchnorm" in a else []
    if "l2" in a:
        parts.append(f"L2 {a['l2']:g}" if a.get("l2") else "no L2")
    return "The run has " + ", ".join(parts) + "." if parts else ""


def _kernel_norms(ctx: Ctx, layer: str) -> tuple[str, pd.Series] | None:
    """Kernel norm over checkpoints of ``layer``, or of the deepest weight layer at or before it."""
    W = ctx.table("weights")
    if not len(W):
        return None
    W = W[W["variable"].astype(str) == "kernel"]
    names = [n for n in dict.fromkeys(W["layer"].astype(str)) if ctx.d(n) <= ctx.d(layer)]
    if not names:
        return None
    name = layer if layer in names else max(names, key=ctx.d)
    s = W[W["layer"].astype(str) == name].set_index("mini_epoch")["norm"].astype(float)
    return name, s


def _grad_norms(ctx: Ctx, layer: str) -> pd.Series | None:
    G = ctx.table("grads")
    if not len(G):
        return None
    g = G[G["layer"].astype(str).str.startswith(layer)].groupby("mini_epoch")["grad_norm"].sum()
    return g if len(g) else None


def _observe_scale(ctx: Ctx, f: Finding) -> str:
    m0, m = int(f.evidence.get("baseline_mini_epoch", 0)), f.mini_epoch
    out = []
    kn = _kernel_norms(ctx, f.layer)
    if kn is not None and m0 in kn[1].index and m in kn[1].index and kn[1][m] > 0:
        name, s = kn
        r = s[m0] / s[m]
        along = r >= 2 if f.kind == "activation_collapse" else r <= 0.5  # weights moved with the activations
        if along:
            what = ("the weights changed with the activations (weight decay shrinking them is the likely cause)"
                    if f.kind == "activation_collapse" else
                    "the weights grew with the activations (a learning rate too high for them is the likely cause)")
        else:
            what = ("the weights hardly changed, so the change comes from the layer's input or from "
                    "multiplicative paths (SE gates, dead channels), not from its own weights")
        size = f"{r:.2g}x smaller" if r >= 1 else f"{1 / r:.2g}x larger"
        out.append(f"The kernel norm of {name} went from {s[m0]:.3g} to {s[m]:.3g} ({size}) between "
                   f"mini-epochs {m0} and {m}: {what}.")
    g = _grad_norms(ctx, kn[0] if kn is not None else f.layer)
    if g is not None and m0 in g.index and m in g.index and g[m0] > 0:
        out.append(f"Its gradient norm went from {g[m0]:.3g} to {g[m]:.3g} on the probes"
                   + (" (vanishing)." if g[m] < g[m0] / 10 else "."))
    out.append(_arch_sentence(ctx))
    return " ".join(s for s in out if s)


def _observe_lr(ctx: Ctx, f: Finding) -> str:
    lr = ctx.lr.get(f.mini_epoch, math.nan)
    prev = [ctx.lr[m] for m in ctx.lr if m < f.mini_epoch and math.isfinite(ctx.lr[m])]
    out = []
    if math.isfinite(lr):
        s = f"The learning rate at mini-epoch {f.mini_epoch} was {lr:.3g}"
        if prev and max(prev) > 1.5 * min(prev + [lr]):
            s += f" (between {min(prev):.3g} and {max(prev):.3g} before)"
        out.append(s + ".")
    W = ctx.table("weights")
    if len(W) and ctx.steps:
        W = W[(W["variable"].astype(str) == "kernel") & (W["mini_epoch"] <= f.mini_epoch)]
        if len(W):
            top = W.loc[W["update_ratio"].astype(float).idxmax()] if W["update_ratio"].notna().any() else None
            if top is not None:
                out.append(f"The largest update ratio up to then was {float(top['update_ratio']):.2g} in "
                           f"{top['layer']} at mini-epoch {int(top['mini_epoch'])}.")
    out.append(_arch_sentence(ctx))
    return " ".join(s for s in out if s)


def _observe_gates(ctx: Ctx, f: Finding) -> str:
    a = ctx.facts.arch
    out = []
    if "se_gate_bias" in a:
        out.append(f"The excitation bias was initialised at {float(a['se_gate_bias']):g} "
                   f"(sigmoid {1 / (1 + math.exp(-float(a['se_gate_bias']))):.2f}).")
    if "near_one_weight" in a:
        w = float(a.get("near_one_weight") or 0)
        out.append(f"A near-1 gate regulariser of weight {w:g} was used." if w else "No near-1 gate regulariser "
                   "was used.")
    spread = f.evidence.get("logit_spread")
    if isinstance(spread, float) and math.isfinite(spread):
        out.append(f"The gate logits vary by {spread:.2g} across probe images"
                   + (" (input-independent)." if spread <= ctx.th.gate_const_tol else "."))
    return " ".join(out) + (" " + _arch_sentence(ctx) if _arch_sentence(ctx) else "")


def _observe_bn(ctx: Ctx, f: Finding) -> str:
    m = int(f.evidence.get("last_unjudged_mini_epoch", f.mini_epoch))  # the warm-up info: its last checkpoint
    s = ctx.steps.get(m)
    out = [f"BatchNorm momentum {ctx.bn_momentum:g}" + (f"; {s:.0f} optimizer steps by mini-epoch {m}"
                                                        if s is not None else "")
           + (f", batch size {ctx.facts.batch_size:.0f}" if math.isfinite(ctx.facts.batch_size) else "") + "."]
    if s is not None:
        out.append(f"The initial values still weigh momentum^steps = {ctx.bn_momentum ** s:.2g}.")
    va, ta = ctx.val_acc.get(m, math.nan), ctx.train_acc.get(m, math.nan)
    if math.isfinite(va) and math.isfinite(ta):
        out.append(f"At mini-epoch {m}: validation accuracy {va:.3g} against training accuracy {ta:.3g}.")
    return " ".join(out)


def _observe_loss(ctx: Ctx, f: Finding) -> str:
    loss = ctx.loss_at(f.mini_epoch)
    s = f"The {ctx.loss_source()} at mini-epoch {f.mini_epoch} is {loss:.3g}" if math.isfinite(loss) else ""
    if s and ctx.n_classes:
        s += f" (chance: ln {ctx.n_classes} = {math.log(ctx.n_classes):.3g})"
    return " ".join(x for x in (s + "." if s else "", _observe_lr(ctx, f)) if x)


OBSERVE: dict[str, Callable[[Ctx, Finding], str]] = {
    "nan_inf": _observe_lr, "dead_channels": _observe_lr, "activation_collapse": _observe_scale,
    "activation_explosion": _observe_scale, "gates_off": _observe_gates, "gates_open": _observe_gates,
    "gates_half": _observe_gates, "gate_product": _observe_gates, "bn_stat_mismatch": _observe_bn,
    "bn_mode_gap": _observe_bn, "update_ratio": _observe_lr, "stalled": _observe_loss,
}


def advise(ctx: Ctx, f: Finding) -> Finding:
    """``f`` with its :class:`Advice` (the info finding of the BatchNorm trap explains itself)."""
    causes, remedy = TEXTS[f.kind]
    if f.kind == "bn_stat_mismatch" and f.severity == "info":
        causes = ("the moving statistics start at mean 0 and variance 1 and need about 1/(1 - momentum) steps "
                  "to reach the real ones")
        remedy = "nothing to fix: judge the run from the warm checkpoints, or lower the momentum for short runs"
    try:
        observed = OBSERVE[f.kind](ctx, f)
    except (KeyError, ValueError, TypeError):  # evidence is an extra: a table without a column must not fail
        observed = ""
    return replace(f, advice=Advice(causes, remedy, observed))
