"""Diagnostics: rules that turn a sweep's tables into findings (see docs/diagnostics.md).

``diagnose(result, history, manifest)`` returns a list of :class:`Finding`, most
severe first. Each finding names its layer(s), the first mini-epoch where it
holds, the numbers behind it, and the page/layer/checkpoint that show it.
Every threshold is a field of :class:`Thresholds` with a documented default.

BatchNorm trap: until a BatchNorm layer's moving statistics have forgotten
their initial values (mean 0, variance 1), inference-mode activations of deep
layers look far too small in *every* run. Rules that depend on inference-mode
activation scale (collapse/explosion, dead channels, BatchNorm mismatch and the
train/inference loss gap) only judge checkpoints where the initial values'
share of each moving variance, ``momentum**steps / moving_variance``, is below
``Thresholds.bn_init_share``; mini-epoch 0 is never judged for such models, and
an info finding explains the skipped range.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlencode

import numpy as np
import pandas as pd

__all__ = ["KINDS", "SEVERITIES", "PAGES", "Finding", "Thresholds", "diagnose", "findings_frame",
           "format_findings", "bn_momentum_of", "add_diagnose", "cmd_diagnose"]

KINDS = ("nan_inf", "dead_channels", "activation_collapse", "activation_explosion", "gates_off", "gates_open",
         "gates_half", "gate_product", "bn_stat_mismatch", "bn_mode_gap", "update_ratio", "stalled")
SEVERITIES = ("problem", "warning", "info")
PAGES = ("overview", "grid", "dynamics", "gates", "weights")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}
_KIND_RANK = {k: i for i, k in enumerate(KINDS)}
#: Variables whose update ratio and distance from init are judged (not biases, BN gamma/beta).
KERNEL_NAMES = frozenset({"kernel", "depthwise_kernel", "pointwise_kernel", "embeddings"})
#: Layer kinds whose activation scale is judged by the collapse/explosion rule.
SCALE_KINDS = frozenset({"conv", "activation", "add", "dense", "se_excite", "other"})
#: Layer kinds whose channels can die (rectified outputs; only layers that are never negative are judged).
DEAD_KINDS = frozenset({"activation", "dense", "se_hidden"})


@dataclass(frozen=True)
class Finding:
    """One diagnosis.

    ``kind`` is one of :data:`KINDS`; ``severity`` "problem" | "warning" | "info";
    ``layers`` every layer (tap, BatchNorm layer, weight layer or SE block) the
    finding covers, in depth order; ``mini_epoch`` the first mini-epoch where it
    holds; ``message`` one plain sentence; ``evidence`` the numbers behind it;
    ``page``/``layer``/``checkpoint`` where the app shows it (see :attr:`link`).
    """

    kind: str
    severity: str
    layers: tuple[str, ...]
    mini_epoch: int
    message: str
    evidence: dict[str, Any] = field(default_factory=dict, hash=False)
    page: str = "overview"
    layer: str = ""
    checkpoint: int = 0
    run: str = ""

    @property
    def link(self) -> str:
        """Query string that opens the page showing this finding: ``?page=...&run=...&layer=...&ckpt=...``."""
        return "?" + urlencode({"page": self.page, "run": self.run, "layer": self.layer,
                                "ckpt": int(self.checkpoint)})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite numbers become None), including ``link``."""
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["evidence"] = {k: _json_num(v) for k, v in self.evidence.items()}
        d["link"] = self.link
        return d


def _json_num(v: Any) -> Any:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of every rule; defaults are explained in docs/diagnostics.md."""

    # dead_channels: a channel is dead when its maximum over every probe image is <= dead_eps.
    dead_eps: float = 0.0
    dead_warning: float = 0.25  # fraction of a layer's channels dead -> warning
    dead_problem: float = 0.5  # -> problem
    dead_growth: float = 0.1  # fraction of channels that died since the first judged checkpoint for "growth";
    #                           without growth (born dead) the severity drops one level
    dead_min_channels: int = 8  # layers with fewer channels are not judged (one unit would be >= 12 %)
    # activation_collapse / activation_explosion: layer std (median over probes) against its own history: the
    # larger (collapse) or smaller (explosion) of the median of its std over every judged checkpoint before and
    # the median of its first scale_baseline judged checkpoints. Mini-epoch 0 is judged only for layers with
    # no BatchNorm before them (the trap), and BN models only once their moving statistics are warm.
    scale_factor: float = 10.0  # std fell (collapse) or rose (explosion) by at least this factor -> warning
    scale_baseline: int = 3  # early reference: median of the first this many judged checkpoints
    scale_problem_factor: float = 100.0  # -> problem (also when the training loss rose at the onset)
    loss_rise: float = 0.02  # relative rise of the training loss that counts as "rose"
    # SE gates (fractions of a block's gates, per probe from gate_channels, then the mean over probes)
    gate_low: float = 0.05  # gate below this is "off" (the sweep's frac_low)
    gate_high: float = 0.95  # gate above this is "open" (frac_high)
    gate_half_tol: float = 0.02  # |gate - 0.5| within this is "half" (frac_half)
    gate_frac: float = 0.5  # fraction of a block's gates off/open/half for a finding
    gate_frac_severe: float = 0.9  # fraction for the higher severity (off: problem, open: warning)
    gate_const_tol: float = 1e-4  # logits varying less than this across probes = input-independent gates
    gate_product_warning: float = 1e-3  # product of mean gates along the trunk below this -> warning
    gate_product_problem: float = 1e-6  # -> problem
    # BatchNorm
    bn_momentum: float | None = None  # None: the manifest's training.arch.bn_momentum, else Keras' 0.99
    bn_init_share: float = 0.1  # judge BN-dependent rules only where momentum**steps / moving_var <= this
    bn_mean_shift: float = 3.0  # |batch mean - moving mean| / moving std (channel mean) above this -> warning
    bn_var_low: float = 0.1  # batch var / moving var (channel median) outside [low, high] -> warning
    bn_var_high: float = 10.0
    bn_problem_mean_shift: float = 10.0  # problem: mean_shift above this or var ratio outside [low, high]
    bn_problem_var_low: float = 0.01
    bn_problem_var_high: float = 100.0
    bn_gap_rel: float = 0.5  # |loss - loss_train_mode| / max(loss_train_mode, bn_gap_floor) -> warning
    bn_gap_abs: float = 0.3  # ... and at least this many nats
    bn_gap_problem_rel: float = 1.0
    bn_gap_problem_abs: float = 0.7
    bn_gap_floor: float = 0.1
    bn_gap_lost: float = 0.5  # or: inference mode loses this fraction of what train mode learned over chance
    bn_gap_problem_lost: float = 0.9  # -> problem (inference mode about as bad as an untrained network)
    bn_gap_min_learned: float = 0.1  # ... judged only when train mode is this many nats below chance
    # update_ratio: ||W_t - W_t-1|| / ||W_t-1|| / steps between the checkpoints (kernels only)
    update_low: float = 1e-6  # per step below this -> warning (the layer barely learns)
    update_high: float = 1e-1  # per step above this -> warning
    update_problem_high: float = 1.0  # per step above this -> problem
    # stalled: whole-model distance from init (kernels) grows < stall_rel over stall_window mini-epochs
    stall_rel: float = 0.01
    stall_window: int = 3
    stall_loss_frac: float = 0.8  # ... while train loss >= this x reference (ln classes, else first loss)
    stall_chance_frac: float = 0.95  # loss >= this x ln(classes): nothing learned -> problem


# ---------------------------------------------------------------------------------------------------------
# context: per-run series every rule needs


def _mget(manifest: Any, key: str, default: Any = None) -> Any:
    if manifest is None:
        return default
    if isinstance(manifest, Mapping):
        return manifest.get(key, default)
    return getattr(manifest, key, default)


def _num(v: Any) -> float:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return math.nan
    return v


class _Ctx:
    """Series derived once from the sweep tables, history and manifest."""

    def __init__(self, result, history: pd.DataFrame | None, manifest: Any, th: Thresholds):
        self.result = result
        self.th = th
        self.run = str(result.run)
        self.order = tuple(result.layer_order)
        self.tables = result.tables
        L = self.table("layers")
        self.mes: list[int] = sorted(int(m) for m in L["mini_epoch"].unique()) if len(L) else []
        for t in ("extras", "weights", "gates", "bn_batch"):
            df = self.table(t)
            if len(df):
                self.mes = sorted(set(self.mes) | {int(m) for m in df["mini_epoch"].unique()})
        self.depth: dict[str, float] = {n: float(i) for i, n in enumerate(self.order)}
        self.kinds: dict[str, str] = {}
        if len(L):
            lk = L.drop_duplicates("layer")
            for name, kind, d in zip(lk["layer"].astype(str), lk["kind"].astype(str), lk["depth"]):
                self.kinds[name] = kind
                self.depth.setdefault(name, float(d))
        self.output_tap = self.order[-1] if self.order else None
        for i, b in enumerate(result.se_blocks):
            gate_taps = [n for n, k in self.kinds.items() if k == "se_gate" and n.startswith(str(b))]
            self.depth.setdefault(str(b), self.depth[gate_taps[0]] if gate_taps else 1e6 + i)
        bn = self.table("bn_batch")
        if len(bn):
            for name, inp in zip(bn["layer"].astype(str), bn["input"].astype(str)):
                self.depth.setdefault(name, self.depth.get(inp, 1e6) + 0.5)
        self.bn_input = dict(zip(bn["layer"].astype(str), bn["input"].astype(str))) if len(bn) else {}

        # manifest facts
        training = _mget(manifest, "training", {}) or {}
        self.batch_size = _num(training.get("batch_size")) if isinstance(training, Mapping) else math.nan
        self.me_images = _num(_mget(manifest, "mini_epoch_images", 0) or math.nan)
        n_classes = len(_mget(manifest, "class_names", ()) or ())
        arch = training.get("arch") if isinstance(training, Mapping) else None
        if n_classes < 2 and isinstance(arch, Mapping):
            k = _num(arch.get("num_classes"))
            n_classes = int(k) if math.isfinite(k) else 0
        self.n_classes = n_classes if n_classes >= 2 else 0

        # history: train loss, lr, images seen
        self.train_loss: dict[int, float] = {}
        self.train_acc: dict[int, float] = {}
        self.val_acc: dict[int, float] = {}
        self.lr: dict[int, float] = {}
        images: dict[int, float] = {}
        if history is not None and len(history) and "mini_epoch" in history:
            for _, row in history.iterrows():
                me = int(row["mini_epoch"])
                self.train_loss[me] = _num(row.get("loss"))
                self.train_acc[me] = _num(row.get("accuracy"))
                self.val_acc[me] = _num(row.get("val_accuracy"))
                self.lr[me] = _num(row.get("lr"))
                images[me] = _num(row.get("images_seen"))
        ex = self.table("extras")
        self.probe_loss = dict(zip(ex["mini_epoch"].astype(int), ex["loss"].astype(float))) if len(ex) else {}
        self.probe_loss_train = (dict(zip(ex["mini_epoch"].astype(int), ex["loss_train_mode"].astype(float)))
                                 if len(ex) and "loss_train_mode" in ex else {})

        # optimizer steps at each checkpoint (None where unknown)
        self.steps: dict[int, float] = {}
        if math.isfinite(self.batch_size) and self.batch_size > 0:
            for me in self.mes:
                seen = images.get(me, math.nan)
                if not math.isfinite(seen):
                    seen = 0.0 if me == 0 else me * self.me_images
                if math.isfinite(seen):
                    self.steps[me] = seen / self.batch_size

        # NaN/Inf onset: other rules ignore that checkpoint and later ones
        self.nan_onset = self._nan_onset()

        # BatchNorm warm-up
        mom = th.bn_momentum
        if mom is None and isinstance(arch, Mapping):
            mom = _num(arch.get("bn_momentum"))
        self.bn_momentum = mom if mom is not None and 0 <= mom < 1 else 0.99
        self.bn_layers = self._bn_layers()
        self.has_bn = bool(self.bn_layers)
        self.bn_share: dict[tuple[str, int], float] = {}
        bt = self.table("batchnorm")
        mv = {}
        if len(bt):
            mv = {(str(l), int(m)): float(v) for l, m, v in
                  zip(bt["layer"], bt["mini_epoch"], bt["moving_variance_mean"])}
        for l in self.bn_layers:
            for me in self.mes:
                s = self.steps.get(me)
                if s is None:
                    continue
                r = self.bn_momentum ** s
                v = mv.get((l, me), math.nan)
                self.bn_share[(l, me)] = r / v if math.isfinite(v) and v > 0 else r

    # -- helpers
    def table(self, name: str) -> pd.DataFrame:
        df = self.tables.get(name)
        return df if df is not None else pd.DataFrame()

    def before_nan(self, me: int) -> bool:
        return self.nan_onset is None or me < self.nan_onset

    def bn_layer_warm(self, layer: str, me: int) -> bool:
        """A BatchNorm layer's moving statistics no longer reflect their initial values."""
        if me < 1 or me not in self.mes:
            return False
        share = self.bn_share.get((layer, me))
        if share is None:  # steps unknown: judge from mini-epoch 1 on
            return True
        return share <= self.th.bn_init_share

    def warm(self, me: int, depth: float = math.inf) -> bool:
        """Inference-mode activations at ``me`` are trustworthy up to ``depth``: every BatchNorm layer
        at or before that depth is warm (always true without BatchNorm)."""
        return all(self.bn_layer_warm(l, me) for l in self.bn_layers if self.d(l) <= depth)

    def judged(self, me: int, layer: str | None = None) -> bool:
        """Checkpoint (for ``layer``: its depth) whose inference-mode activations rules may judge."""
        return self.before_nan(me) and self.warm(me, math.inf if layer is None else self.d(layer))

    def d(self, name: str) -> float:
        return self.depth.get(name, 1e9)

    def loss_at(self, me: int) -> float:
        v = self.train_loss.get(me, math.nan)
        return v if math.isfinite(v) else self.probe_loss.get(me, math.nan)

    def loss_source(self) -> str:
        return "training loss" if self.train_loss else "probe loss"

    def _bn_layers(self) -> list[str]:
        names: set[str] = set()
        for t in ("batchnorm", "bn_batch"):
            df = self.table(t)
            if len(df):
                names |= set(df["layer"].astype(str))
        for n in names:  # input tap unknown: treat it as preceding every layer (the safe side of the trap)
            self.depth.setdefault(n, -1.0)
        return sorted(names, key=lambda n: self.depth[n])

    def _nan_onset(self) -> int | None:
        cands = []
        ex = self.table("extras")
        if len(ex):
            bad = ex[(ex["n_nan_weights"] > 0) | (ex["n_inf_weights"] > 0)]
            if len(bad):
                cands.append(int(bad["mini_epoch"].min()))
        w = self.table("weights")
        if len(w):
            bad = w[(w["n_nan"] > 0) | (w["n_inf"] > 0)]
            if len(bad):
                cands.append(int(bad["mini_epoch"].min()))
        L = self.table("layers")
        if len(L):
            bad = L[(L["n_nan"] > 0) | (L["n_inf"] > 0)]
            if len(bad):
                cands.append(int(bad["mini_epoch"].min()))
        return min(cands) if cands else None


# ---------------------------------------------------------------------------------------------------------
# grouping: one finding per (kind, layer group with the same onset)


@dataclass
class _Hit:
    layer: str
    onset: int
    severity: str
    evidence: dict[str, Any]
    group: str = ""  # sub-kind (e.g. direction) that must match to share a finding


def _worst(sevs: Iterable[str]) -> str:
    return min(sevs, key=lambda s: _RANK[s])


def _at_worst(series: list[_Hit]) -> _Hit | None:
    """Of one layer's flagged checkpoints (in time order): the first at the worst severity reached,
    with the first flagged mini-epoch added to its evidence."""
    if not series:
        return None
    sev = _worst(h.severity for h in series)
    h = next(h for h in series if h.severity == sev)
    h.evidence.setdefault("first_flagged_mini_epoch", series[0].onset)
    return h


def _also(names: Sequence[str], limit: int = 4) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f" (also {shown}{more})"


def _grouped(ctx: _Ctx, kind: str, hits: list[_Hit], page: str,
             message: Callable[[_Hit, list[_Hit]], str], by_severity: bool = True) -> list[Finding]:
    """One finding per group of hits with the same sub-kind and onset (and severity, unless
    ``by_severity`` is False: then the group takes its worst severity); ``layer`` is the shallowest."""
    groups: dict[tuple[str, str, int], list[_Hit]] = {}
    for h in hits:
        groups.setdefault((h.group, h.severity if by_severity else "", h.onset), []).append(h)
    out = []
    for (_, _, onset), hs in groups.items():
        hs.sort(key=lambda h: ctx.d(h.layer))
        first = hs[0]
        ev = dict(first.evidence)
        ev["n_layers"] = len(hs)
        out.append(Finding(kind=kind, severity=_worst(h.severity for h in hs), layers=tuple(h.layer for h in hs),
                           mini_epoch=int(onset), message=message(first, hs[1:]), evidence=ev, page=page,
                           layer=first.layer, checkpoint=int(onset), run=ctx.run))
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


# ---------------------------------------------------------------------------------------------------------
# rules


def _rule_nan(ctx: _Ctx) -> list[Finding]:
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
                    page=page, layer=layer, checkpoint=t, run=ctx.run)]


def _rule_dead(ctx: _Ctx) -> list[Finding]:
    th = ctx.th
    C = ctx.table("channels")
    if not len(C):
        return []
    cand = [n for n, k in ctx.kinds.items() if k in DEAD_KINDS and n != ctx.output_tap]
    C = C[C["layer"].astype(str).isin(cand)]
    if not len(C):
        return []
    g = C.groupby(["layer", "mini_epoch", "channel"], observed=True).agg(mx=("max", "max"), mn=("min", "min"))
    g = g.reset_index()
    g["layer"] = g["layer"].astype(str)
    hits = []
    for layer, df in g.groupby("layer"):
        if not (df["mn"].min() >= 0):  # only rectified outputs (never negative) can be "dead"
            continue
        by_me = {int(m): d.set_index("channel")["mx"] for m, d in df.groupby("mini_epoch")
                 if ctx.judged(int(m), layer)}
        mes = sorted(by_me)
        if not mes:
            continue
        n_ch = len(by_me[mes[0]])
        if n_ch < th.dead_min_channels:
            continue
        base_me = mes[0]
        base_dead = set(by_me[base_me].index[by_me[base_me] <= th.dead_eps])
        series = []
        for m in mes:
            dead = set(by_me[m].index[by_me[m] <= th.dead_eps])
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
        sev = _worst(s[3] for s in flagged)
        onset = next(s for s in flagged if s[3] == sev)  # first checkpoint at the finding's severity
        peak = max(series, key=lambda s: s[1])
        last = series[-1]
        recovered = last[1] < th.dead_warning
        if recovered:  # most channels came back to life by the last checkpoint: transient, one level lower
            sev = {"problem": "warning", "warning": "info", "info": "info"}[sev]
        hits.append(_Hit(layer, onset[0], sev, {
            "frac_dead": onset[1], "growth_since_start": onset[2], "frac_dead_start": len(base_dead) / n_ch,
            "start_mini_epoch": base_me, "first_flagged_mini_epoch": flagged[0][0],
            "frac_dead_max": peak[1], "max_mini_epoch": peak[0], "frac_dead_last": last[1],
            "last_mini_epoch": last[0], "recovered": recovered, "n_channels": n_ch, "depth": ctx.d(layer)}))

    def msg(h: _Hit, others: list[_Hit]) -> str:
        e = h.evidence
        s = (f"From mini-epoch {h.onset}, {_pct(e['frac_dead'])} of the channels of {h.layer} "
             f"({round(e['frac_dead'] * e['n_channels'])} of {e['n_channels']}) are zero on every probe image "
             f"(dead ReLUs)")
        if e["growth_since_start"] >= ctx.th.dead_growth:
            s += f", up from {_pct(e['frac_dead_start'])} at mini-epoch {e['start_mini_epoch']}"
        elif h.onset > e["start_mini_epoch"]:
            s += f"; most were already dead at mini-epoch {e['start_mini_epoch']}"
        if e["frac_dead_max"] > e["frac_dead"] + 1e-9:
            s += f", and {_pct(e['frac_dead_max'])} by mini-epoch {e['max_mini_epoch']}"
        if e["recovered"]:
            s += f", but only {_pct(e['frac_dead_last'])} are still dead at mini-epoch {e['last_mini_epoch']}"
        return s + _also([o.layer for o in others]) + "."

    return _grouped(ctx, "dead_channels", hits, "grid", msg)


def _layer_std(ctx: _Ctx) -> pd.DataFrame:
    """Median over probes of each layer's std: index layer, columns mini_epoch."""
    L = ctx.table("layers")
    if not len(L):
        return pd.DataFrame()
    s = L.groupby(["layer", "mini_epoch"], observed=True)["std"].median().unstack("mini_epoch")
    s.index = s.index.astype(str)
    return s


def _rule_scale(ctx: _Ctx) -> list[Finding]:
    th = ctx.th
    S = _layer_std(ctx)
    if not len(S):
        return []
    hits: dict[str, list[_Hit]] = {"activation_collapse": [], "activation_explosion": []}
    for layer in S.index:
        if ctx.kinds.get(layer, "other") not in SCALE_KINDS or layer == ctx.output_tap:
            continue
        # mini-epoch 0 only where no BatchNorm precedes the layer (the trap); judged() already says so
        judged = [m for m in ctx.mes if m in S.columns and ctx.judged(m, layer)]
        row = S.loc[layer]
        seen: list[float] = []
        factors: dict[str, list[tuple[int, float, float, float]]] = {k: [] for k in hits}  # (m, f, std, ref)
        for m in judged:
            s = float(row.get(m, math.nan))
            if not math.isfinite(s):
                continue
            if seen:
                recent, early = float(np.median(seen)), float(np.median(seen[:th.scale_baseline]))
                ref = max(recent, early)
                factors["activation_collapse"].append((m, (ref / s if s > 0 else math.inf) if ref > 0 else 0.0,
                                                       s, ref))
                ref = min(recent, early)
                factors["activation_explosion"].append((m, s / ref if ref > 0 else 0.0, s, ref))
            seen.append(s)
        for kind, fs in factors.items():
            onset = next((x for x in fs if x[1] >= th.scale_factor), None)
            if onset is None:
                continue
            m, f, s, ref = onset
            peak = max((x for x in fs if x[0] >= m), key=lambda x: x[1])
            prev = [p for p in ctx.mes if p < m]
            lb = ctx.loss_at(prev[-1]) if prev else math.nan
            la = ctx.loss_at(m)
            rose = bool(math.isfinite(lb) and math.isfinite(la) and la > lb * (1 + th.loss_rise))
            sev = "problem" if f >= th.scale_problem_factor or rose else "warning"
            hits[kind].append(_Hit(layer, m, sev, {
                "factor": f, "std": s, "reference_std": ref, "factor_max": peak[1], "max_mini_epoch": peak[0],
                "depth": ctx.d(layer), "loss_before": lb, "loss_at": la, "loss_rose": rose}))

    out = []
    for kind, hs in hits.items():
        word = "collapses" if kind == "activation_collapse" else "explodes"
        rel = "below" if kind == "activation_collapse" else "above"

        def msg(h: _Hit, others: list[_Hit], word=word, rel=rel) -> str:
            e = h.evidence
            s = (f"At mini-epoch {h.onset} the activation scale {word} from {h.layer} on (depth "
                 f"{int(e['depth'])}): its std is {e['factor']:.0f}x {rel} its earlier level")
            if others:
                s += (f", and {len(others)} deeper layer{'s follow' if len(others) > 1 else ' follows'} at the "
                      f"same time")
                top = max(others, key=lambda o: o.evidence["factor"])
                if top.evidence["factor"] > e["factor"]:
                    s += f" (up to {top.evidence['factor']:.0f}x in {top.layer})"
            if math.isfinite(e["loss_at"]) and math.isfinite(e["loss_before"]):
                src = ctx.loss_source()
                s += (f"; the {src} rose at the same time ({e['loss_before']:.3g} -> {e['loss_at']:.3g})"
                      if e["loss_rose"] else f"; the {src} did not rise ({e['loss_before']:.3g} -> "
                                              f"{e['loss_at']:.3g})")
            return s + "."

        out += _grouped(ctx, kind, hs, "dynamics", msg, by_severity=False)
    return out


def _gate_spread(ctx: _Ctx) -> dict[tuple[int, str], float]:
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


def _gate_fractions(ctx: _Ctx) -> pd.DataFrame:
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


def _rule_gates(ctx: _Ctx) -> list[Finding]:
    th = ctx.th
    agg = _gate_fractions(ctx)
    if not len(agg):
        return []
    agg["block"] = agg["block"].astype(str)
    spread = _gate_spread(ctx)
    hits: dict[str, list[_Hit]] = {"gates_off": [], "gates_open": [], "gates_half": []}
    for block, df in agg.groupby("block"):
        df = df.sort_values("mini_epoch")
        series: dict[str, list[_Hit]] = {k: [] for k in hits}
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
                series[kind].append(_Hit(block, m, sev, {"frac": float(frac), "mean_gate": float(r["mean"]),
                                                         "logit_spread": sp, "depth": ctx.d(block)}))
        for kind, ser in series.items():
            h = _at_worst(ser)
            if h is not None:
                hits[kind].append(h)

    texts = {
        "gates_off": lambda h: (f"From mini-epoch {h.onset}, {_pct(h.evidence['frac'])} of the SE gates of "
                                f"{h.layer} are below {th.gate_low:g} (mean gate {h.evidence['mean_gate']:.3g}): "
                                f"the block switches its channels off"),
        "gates_open": lambda h: (f"From mini-epoch {h.onset}, {_pct(h.evidence['frac'])} of the SE gates of "
                                 f"{h.layer} are above {th.gate_high:g}: the block passes its input unchanged, "
                                 f"so the SE block does nothing"),
        "gates_half": lambda h: (f"From mini-epoch {h.onset}, {_pct(h.evidence['frac'])} of the SE gates of "
                                 f"{h.layer} sit at 0.5 and do not depend on the input: the squeeze path is "
                                 f"dead and the block only halves its input"),
    }
    out = []
    for kind, hs in hits.items():
        out += _grouped(ctx, kind, hs, "gates",
                        lambda h, others, kind=kind: texts[kind](h) + _also([o.layer for o in others]) + ".")
    return out


def _rule_gate_product(ctx: _Ctx) -> list[Finding]:
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
                            page="gates", layer=weakest, checkpoint=m, run=ctx.run)]
    return []


def _rule_bn(ctx: _Ctx) -> list[Finding]:
    th = ctx.th
    out: list[Finding] = []
    if not ctx.has_bn:
        return out
    # the trap: explain the checkpoints that are not judged
    unwarm = [m for m in ctx.mes if ctx.before_nan(m) and not ctx.warm(m)]
    if unwarm:
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
        msg = (f"{span} the BatchNorm moving statistics still hold more than {_pct(th.bn_init_share)} of their "
               f"initial values, so inference-mode activations of deep layers such as {deep} look far too small "
               f"there; this is expected, not a collapse, and {tail}.")
        ev = {"last_unjudged_mini_epoch": last, "momentum": ctx.bn_momentum,
              "steps": ctx.steps.get(last, math.nan),
              "init_share": max((ctx.bn_share.get((l, last), math.nan) for l in ctx.bn_layers), default=math.nan)}
        out.append(Finding("bn_stat_mismatch", "info", (*ctx.bn_layers, deep), 0, msg, ev, page="dynamics",
                           layer=deep, checkpoint=0, run=ctx.run))

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
                hits.append(_Hit(layer, m, "problem" if severe else "warning", {
                    "mean_shift": shift, "var_ratio": ratio, "init_share": ctx.bn_share.get((layer, m), math.nan),
                    "depth": ctx.d(layer)}))
                break

    def msg(h: _Hit, others: list[_Hit]) -> str:
        e = h.evidence
        return (f"From mini-epoch {h.onset} the moving statistics of {h.layer} no longer match the probe batch "
                f"(batch mean {e['mean_shift']:.2g} moving std away, batch/moving variance "
                f"{e['var_ratio']:.2g}), so its inference-mode outputs are off" + _also([o.layer for o in others])
                + ".")

    out += _grouped(ctx, "bn_stat_mismatch", hits, "weights", msg)

    # train-mode vs inference-mode loss on the probes
    # chance-level loss: ln(classes), else the probe loss of the first checkpoint (the initial weights)
    chance = math.log(ctx.n_classes) if ctx.n_classes else (
        ctx.probe_loss.get(ctx.mes[0], math.nan) if ctx.mes else math.nan)
    gaps: dict[int, tuple[float, float, float, float, str | None]] = {}
    lost_at: dict[int, float] = {}
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
        lost_at[m] = lost
        big = rel >= th.bn_gap_rel and gap >= th.bn_gap_abs
        if not ctx.warm(m):  # warming up: only a large gap that lasts to the end is reported (below)
            sev = "warning" if big else None
        elif rel >= th.bn_gap_problem_rel and gap >= th.bn_gap_problem_abs or lost >= th.bn_gap_problem_lost:
            sev = "problem"
        else:
            sev = "warning" if big or lost >= th.bn_gap_lost else None
        gaps[m] = (a, b, gap, rel, sev)
    layer = ctx.bn_layers[0]
    warm_hits = [m for m, g in gaps.items() if g[4] and ctx.warm(m)]
    if warm_hits:
        m = warm_hits[0]
        a, b, gap, rel, sev = gaps[m]
        lost = lost_at.get(m, math.nan)
        extra = (f", losing {_pct(min(lost, 9.99))} of what the network learned over chance"
                 if math.isfinite(lost) and lost >= th.bn_gap_lost else "")
        out.append(Finding(
            "bn_mode_gap", sev, tuple(ctx.bn_layers), m,
            f"At mini-epoch {m} the probe loss in inference mode ({a:.3g}) differs from the loss with batch "
            f"statistics ({b:.3g}) by {_pct(rel)}{extra}: BatchNorm behaves differently at inference than in "
            f"training.",
            {"loss": a, "loss_train_mode": b, "gap": gap, "rel_gap": rel, "frac_learned_lost": lost,
             "chance_loss": chance},
            page="overview", layer=layer, checkpoint=m, run=ctx.run))
    elif gaps and gaps[max(gaps)][4] and not ctx.warm(max(gaps)):
        # still warming up at the end of the run: expected, but the inference outputs are not usable yet
        last = max(gaps)
        onset = last
        for m in sorted(gaps, reverse=True):
            if not gaps[m][4]:
                break
            onset = m
        a, b, gap, rel, _ = gaps[last]
        shares = {l: ctx.bn_share.get((l, last), math.nan) for l in ctx.bn_layers}
        slow = max(shares, key=lambda l: shares[l] if math.isfinite(shares[l]) else -1)
        share = shares[slow]
        why = (f"{_pct(share)} of the moving variance of {slow} is still its initial value"
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
             "last_mini_epoch": last}, page="overview", layer=slow, checkpoint=last, run=ctx.run))
    return out


def _steps_between(ctx: _Ctx, prev: int, cur: int) -> float:
    a, b = ctx.steps.get(prev), ctx.steps.get(cur)
    if a is None or b is None:
        return math.nan
    return b - a


def _rule_update(ctx: _Ctx) -> list[Finding]:
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
        series: dict[str, list[_Hit]] = {"high": [], "low": []}
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
            series[d].append(_Hit(layer, m, sev, {"per_step": per, "update_ratio": ratio, "steps": steps,
                                                  "depth": ctx.d(layer)}, group=d))
        hits += [h for h in map(_at_worst, series.values()) if h is not None]

    def msg(h: _Hit, others: list[_Hit]) -> str:
        e = h.evidence
        what = "too high: its updates are large against the weights" if h.group == "high" else \
            "too low: the layer barely learns"
        return (f"From mini-epoch {h.onset} the weights of {h.layer} change by {e['per_step']:.1e} of their norm "
                f"per step (about 1e-3 is typical), so its effective learning rate is {what}"
                + _also([o.layer for o in others]) + ".")

    return _grouped(ctx, "update_ratio", hits, "weights", msg)


def _rule_stalled(ctx: _Ctx) -> list[Finding]:
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
        msg = (f"From mini-epoch {m} the weights have moved less than {_pct(th.stall_rel)} further from their "
               f"initial values over {th.stall_window} mini-epochs while the {ctx.loss_source()} is still "
               f"{loss:.3g} ({_pct(loss / ref)} of {ref_txt}): training has stalled, starting with {stalled[0]}.")
        return [Finding("stalled", "problem" if chance else "warning", tuple(stalled), m, msg,
                        {"rel_change": rel, "distance": d, "distance_before": d0, "loss": loss,
                         "loss_reference": ref, "window": th.stall_window},
                        page="weights", layer=stalled[0], checkpoint=m, run=ctx.run)]
    return []


RULES: tuple[Callable[[_Ctx], list[Finding]], ...] = (
    _rule_nan, _rule_dead, _rule_scale, _rule_gates, _rule_gate_product, _rule_bn, _rule_update, _rule_stalled)


def diagnose(result, history: pd.DataFrame | None = None, manifest: Any = None,
             thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """Run every rule on a :class:`core.analysis.sweep.SweepResult`; findings sorted most severe first, then by onset.

    ``history``: the run's history table (train loss, lr, images seen); ``manifest``:
    a :class:`core.run.runs.Manifest` or its raw dict (batch size, mini-epoch size,
    class names). Both are optional: rules that need them are skipped or fall
    back (see docs/diagnostics.md).
    """
    ctx = _Ctx(result, history, manifest, thresholds)
    out: list[Finding] = []
    for rule in RULES:
        out += rule(ctx)
    out.sort(key=lambda f: (_RANK[f.severity], f.mini_epoch, ctx.d(f.layer), _KIND_RANK.get(f.kind, 99)))
    return out


def findings_frame(findings: Sequence[Finding]) -> pd.DataFrame:
    """One row per finding (for tables in the UI): severity, kind, mini_epoch, layer, layers, message, link."""
    cols = ["severity", "kind", "mini_epoch", "layer", "layers", "message", "page", "checkpoint", "link"]
    return pd.DataFrame([{"severity": f.severity, "kind": f.kind, "mini_epoch": f.mini_epoch, "layer": f.layer,
                          "layers": ", ".join(f.layers), "message": f.message, "page": f.page,
                          "checkpoint": f.checkpoint, "link": f.link} for f in findings], columns=cols)


def format_findings(findings: Sequence[Finding], run: str = "") -> str:
    """Plain-text table: one line per finding (severity, kind, mini-epoch, layer, message)."""
    if not findings:
        return f"no findings for {run or 'this run'}\n"
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    head = (f"{len(findings)} finding{'s' if len(findings) != 1 else ''} for {run or 'this run'}: "
            + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    rows = [("SEVERITY", "KIND", "ME", "LAYER", "FINDING")]
    rows += [(f.severity.upper(), f.kind, str(f.mini_epoch), f.layer, f.message) for f in findings]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [head] + ["  ".join(r[i].ljust(w[i]) for i in range(4)) + "  " + r[4] for r in rows]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# CLI: python -m core diagnose RUN [--json] [--runs-root]


def add_diagnose(sub) -> None:
    """Register ``diagnose`` on an argparse sub-parsers object (``python -m core diagnose RUN``)."""
    from core.cli import _add_run_args

    p = sub.add_parser("diagnose", help="sweep a run (if not cached) and list what looks wrong",
                       description="Sweep every checkpoint (cached in the run) and print the findings of the "
                                   "diagnostic rules, most severe first (see docs/diagnostics.md).")
    _add_run_args(p)
    p.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    p.set_defaults(func=cmd_diagnose)


def bn_momentum_of(run) -> float | None:
    """Largest BatchNormalization momentum in the run's ``.keras`` architecture (read from its config
    without building the model); None when there is none or the file is not a ``.keras`` archive."""
    import zipfile

    try:
        with zipfile.ZipFile(run.architecture_path) as z:
            cfg = json.loads(z.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    found: list[float] = []

    def walk(o: Any) -> None:
        if isinstance(o, dict):
            if o.get("class_name") == "BatchNormalization" and isinstance(o.get("config"), dict):
                m = o["config"].get("momentum")
                if isinstance(m, (int, float)):
                    found.append(float(m))
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(cfg)
    return max(found) if found else None


def cmd_diagnose(args) -> int:
    from core.cli import run_sweep_cli

    run, result = run_sweep_cli(args)
    th = Thresholds()
    mom = bn_momentum_of(run)  # the model file is authoritative (also for imported runs)
    if mom is not None:
        th = replace(th, bn_momentum=mom)
    findings = diagnose(result, run.history(), run.manifest, th)
    if args.json:
        print(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        sys.stdout.write(format_findings(findings, run.name))
    return 0
