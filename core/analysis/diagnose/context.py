"""Per-run series every rule needs (the context), and the grouping of per-layer hits into findings.

BatchNorm trap: until a BatchNorm layer's moving statistics have forgotten their initial
values (mean 0, variance 1), inference-mode activations of deep layers look far too small in
*every* run. Rules that depend on inference-mode activation scale only judge checkpoints where
the initial values' share of each moving variance, ``momentum**steps / moving_variance``, is
below ``Thresholds.bn_init_share``; mini-epoch 0 is never judged for such models.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from core.analysis.diagnose.model import RANK, Finding, Thresholds, View

#: Layer kinds whose activation scale is judged by the collapse/explosion rule.
SCALE_KINDS = frozenset({"conv", "activation", "add", "dense", "se_excite", "other"})


def manifest_get(manifest: Any, key: str, default: Any = None) -> Any:
    if manifest is None:
        return default
    if isinstance(manifest, Mapping):
        return manifest.get(key, default)
    return getattr(manifest, key, default)


def num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


@dataclass(frozen=True)
class RunFacts:
    """What the manifest says that the rules use."""

    batch_size: float
    mini_epoch_images: float
    n_classes: int  # 0 when unknown
    arch: Mapping[str, Any]

    @classmethod
    def of(cls, manifest: Any) -> "RunFacts":
        training = manifest_get(manifest, "training", {}) or {}
        training = training if isinstance(training, Mapping) else {}
        arch = training.get("arch") if isinstance(training.get("arch"), Mapping) else {}
        n = len(manifest_get(manifest, "class_names", ()) or ())
        if n < 2:
            k = num(arch.get("num_classes"))
            n = int(k) if math.isfinite(k) else 0
        return cls(num(training.get("batch_size")), num(manifest_get(manifest, "mini_epoch_images", 0) or math.nan),
                   n if n >= 2 else 0, dict(arch))


@dataclass(frozen=True)
class HistorySeries:
    """The history table as per-mini-epoch dicts."""

    loss: dict[int, float]
    accuracy: dict[int, float]
    val_accuracy: dict[int, float]
    lr: dict[int, float]
    images: dict[int, float]

    @classmethod
    def of(cls, history: pd.DataFrame | None) -> "HistorySeries":
        cols = {"loss": {}, "accuracy": {}, "val_accuracy": {}, "lr": {}, "images_seen": {}}
        if history is not None and len(history) and "mini_epoch" in history:
            mes = history["mini_epoch"].astype(int).tolist()
            for c, out in cols.items():
                vals = history[c].tolist() if c in history else [math.nan] * len(mes)
                out.update({m: num(v) for m, v in zip(mes, vals)})
        return cls(cols["loss"], cols["accuracy"], cols["val_accuracy"], cols["lr"], cols["images_seen"])


class Ctx:
    """Series derived once from the sweep tables, history and manifest."""

    def __init__(self, result, history: pd.DataFrame | None, manifest: Any, th: Thresholds):
        self.result = result
        self.manifest = manifest  # read by rules that need the run's settings (e.g. its pixel scaling)
        self.th = th
        self.run = str(result.run)
        self.order = tuple(result.layer_order)
        self.tables = result.tables
        self.facts = RunFacts.of(manifest)
        self.n_classes = self.facts.n_classes
        hist = HistorySeries.of(history)
        self.train_loss, self.train_acc, self.val_acc, self.lr = hist.loss, hist.accuracy, hist.val_accuracy, hist.lr
        self._topology()
        ex = self.table("extras")
        self.probe_loss = dict(zip(ex["mini_epoch"].astype(int), ex["loss"].astype(float))) if len(ex) else {}
        self.probe_loss_train = (dict(zip(ex["mini_epoch"].astype(int), ex["loss_train_mode"].astype(float)))
                                 if len(ex) and "loss_train_mode" in ex else {})
        self.steps = self._steps(hist.images)
        self.nan_onset = self._nan_onset()  # other rules ignore that checkpoint and later ones
        self._batchnorm()

    # -- construction
    def _topology(self) -> None:
        """Checkpoints, depth and kind of every tap, SE block and BatchNorm layer."""
        mes: set[int] = set()
        for t in ("layers", "extras", "weights", "gates", "bn_batch"):
            df = self.table(t)
            if len(df):
                mes |= {int(m) for m in df["mini_epoch"].unique()}
        self.mes: list[int] = sorted(mes)
        self.depth: dict[str, float] = {n: float(i) for i, n in enumerate(self.order)}
        self.kinds: dict[str, str] = {}
        L = self.table("layers")
        if len(L):
            lk = L.drop_duplicates("layer")
            for name, kind, d in zip(lk["layer"].astype(str), lk["kind"].astype(str), lk["depth"]):
                self.kinds[name] = kind
                self.depth.setdefault(name, float(d))
        self.output_tap = self.order[-1] if self.order else None
        for i, b in enumerate(self.result.se_blocks):
            gate_taps = [n for n, k in self.kinds.items() if k == "se_gate" and n.startswith(str(b))]
            self.depth.setdefault(str(b), self.depth[gate_taps[0]] if gate_taps else 1e6 + i)
        bn = self.table("bn_batch")
        self.bn_input = dict(zip(bn["layer"].astype(str), bn["input"].astype(str))) if len(bn) else {}
        for name, inp in self.bn_input.items():
            self.depth.setdefault(name, self.depth.get(inp, 1e6) + 0.5)

    def _steps(self, images: dict[int, float]) -> dict[int, float]:
        """Optimizer steps at each checkpoint (absent where unknown)."""
        bs, me_images = self.facts.batch_size, self.facts.mini_epoch_images
        if not (math.isfinite(bs) and bs > 0):
            return {}
        out = {}
        for me in self.mes:
            seen = images.get(me, math.nan)
            if not math.isfinite(seen):
                seen = 0.0 if me == 0 else me * me_images
            if math.isfinite(seen):
                out[me] = seen / bs
        return out

    def _batchnorm(self) -> None:
        """BatchNorm layers, momentum, and the initial values' share of each moving variance."""
        mom = self.th.bn_momentum
        if mom is None:
            mom = num(self.facts.arch.get("bn_momentum"))
        self.bn_momentum = mom if mom is not None and 0 <= mom < 1 else 0.99
        self.bn_layers = self._bn_layers()
        self.has_bn = bool(self.bn_layers)
        bt = self.table("batchnorm")
        mv = ({(str(l), int(m)): float(v) for l, m, v in
               zip(bt["layer"], bt["mini_epoch"], bt["moving_variance_mean"])} if len(bt) else {})
        self.bn_share: dict[tuple[str, int], float] = {}
        for l in self.bn_layers:
            for me in self.mes:
                s = self.steps.get(me)
                if s is None:
                    continue
                r = self.bn_momentum ** s
                v = mv.get((l, me), math.nan)
                self.bn_share[(l, me)] = r / v if math.isfinite(v) and v > 0 else r

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
        for t, a, b in (("extras", "n_nan_weights", "n_inf_weights"), ("weights", "n_nan", "n_inf"),
                        ("layers", "n_nan", "n_inf")):
            df = self.table(t)
            if len(df):
                bad = df[(df[a] > 0) | (df[b] > 0)]
                if len(bad):
                    cands.append(int(bad["mini_epoch"].min()))
        return min(cands) if cands else None

    # -- queries
    def table(self, name: str, columns: list[str] | None = None) -> pd.DataFrame:
        """A sweep table; ``columns``: only these are read (a run's per-channel table can be GBs)."""
        if columns is not None and hasattr(self.result, "table"):
            return self.result.table(name, columns)
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

    def view(self, page: str, layer: str, checkpoint: int) -> View:
        """The view of ``layer`` on ``page``: SE blocks are selected as blocks, everything else as a layer."""
        if layer in self.result.se_blocks:
            return View(page, block=layer, checkpoint=int(checkpoint))
        return View(page, layer=layer, checkpoint=int(checkpoint))


# ---------------------------------------------------------------------------------------------------------
# grouping: one finding per (kind, layer group with the same onset)


@dataclass
class Hit:
    layer: str
    onset: int
    severity: str
    evidence: dict[str, Any]
    group: str = ""  # sub-kind (e.g. direction) that must match to share a finding


def worst(sevs: Iterable[str]) -> str:
    return min(sevs, key=lambda s: RANK[s])


def at_worst(series: list[Hit]) -> Hit | None:
    """Of one layer's flagged checkpoints (in time order): the first at the worst severity reached,
    with the first flagged mini-epoch added to its evidence."""
    if not series:
        return None
    sev = worst(h.severity for h in series)
    h = next(h for h in series if h.severity == sev)
    h.evidence.setdefault("first_flagged_mini_epoch", series[0].onset)
    return h


def also(names: Sequence[str], limit: int = 4) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f" (also {shown}{more})"


def grouped(ctx: Ctx, kind: str, hits: list[Hit], page: str,
            message: Callable[[Hit, list[Hit]], str], by_severity: bool = True) -> list[Finding]:
    """One finding per group of hits with the same sub-kind and onset (and severity, unless
    ``by_severity`` is False: then the group takes its worst severity); ``layer`` is the shallowest."""
    groups: dict[tuple[str, str, int], list[Hit]] = {}
    for h in hits:
        groups.setdefault((h.group, h.severity if by_severity else "", h.onset), []).append(h)
    out = []
    for (_, _, onset), hs in groups.items():
        hs.sort(key=lambda h: ctx.d(h.layer))
        first = hs[0]
        ev = dict(first.evidence)
        ev["n_layers"] = len(hs)
        out.append(Finding(kind=kind, severity=worst(h.severity for h in hs), layers=tuple(h.layer for h in hs),
                           mini_epoch=int(onset), message=message(first, hs[1:]), evidence=ev,
                           layer=first.layer, view=ctx.view(page, first.layer, onset)))
    return out
