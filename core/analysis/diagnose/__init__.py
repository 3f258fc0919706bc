"""Diagnostics: rules that turn a sweep's tables into findings (see docs/diagnostics.md).

``diagnose(result, history, manifest)`` returns a list of :class:`Finding`, most severe first.
Each finding names its layer(s), the first mini-epoch where it holds, the numbers behind it,
what usually causes it and what to try, and the view (page, layer or SE block, checkpoint)
that shows it. Every threshold is a field of :class:`Thresholds` with a documented default.

Modules: ``model`` (what a finding is), ``context`` (per-run series, the BatchNorm trap,
grouping), ``scale`` (the ranked scale-change table and the collapse/explosion rule),
``activity`` (NaN/Inf, dead channels), ``gates`` (SE gates), ``batchnorm``, ``weights``
(update ratio, stalled), ``advice`` (causes, remedies, evidence from the run).
"""
from __future__ import annotations

import json
import zipfile
from typing import Any, Callable

import pandas as pd

from core.analysis.diagnose.activity import DEAD_KINDS, rule_dead, rule_nan
from core.analysis.diagnose.advice import TEXTS, advise
from core.analysis.diagnose.batchnorm import rule_bn_gap, rule_bn_stats, rule_bn_warmup
from core.analysis.diagnose.context import SCALE_KINDS, Ctx
from core.analysis.diagnose.gates import rule_gate_product, rule_gates
from core.analysis.diagnose.model import (
    KIND_RANK, KINDS, RANK, SEVERITIES, Advice, Finding, Thresholds, View, findings_frame, format_findings,
)
from core.analysis.diagnose.scale import SCALE_COLUMNS, scale_table
from core.analysis.diagnose.weights import KERNEL_NAMES, rule_stalled, rule_update

__all__ = ["KINDS", "SEVERITIES", "Finding", "View", "Advice", "Thresholds", "diagnose", "findings_frame",
           "format_findings", "bn_momentum_of", "thresholds_for", "scale_table", "SCALE_COLUMNS", "TEXTS",
           "KERNEL_NAMES", "SCALE_KINDS", "DEAD_KINDS"]

from core.analysis.diagnose.scale import rule_scale  # noqa: E402
from core.analysis.diagnose.input_scaling import rule_input_scaling  # noqa: E402

RULES: tuple[Callable[[Ctx], list[Finding]], ...] = (
    rule_nan, rule_dead, rule_scale, rule_gates, rule_gate_product, rule_bn_warmup, rule_bn_stats, rule_bn_gap,
    rule_update, rule_stalled, rule_input_scaling)


def diagnose(result, history: pd.DataFrame | None = None, manifest: Any = None,
             thresholds: Thresholds = Thresholds()) -> list[Finding]:
    """Run every rule on a :class:`core.analysis.sweep.SweepResult`; findings sorted most severe first, then by onset.

    ``history``: the run's history table (train loss, lr, images seen); ``manifest``:
    a :class:`core.run.runs.Manifest` or its raw dict (batch size, mini-epoch size,
    class names). Both are optional: rules that need them are skipped or fall
    back (see docs/diagnostics.md).
    """
    ctx = Ctx(result, history, manifest, thresholds)
    out: list[Finding] = []
    for rule in RULES:
        out += [advise(ctx, f) for f in rule(ctx)]
    out.sort(key=lambda f: (RANK[f.severity], f.mini_epoch, ctx.d(f.layer), KIND_RANK.get(f.kind, 99)))
    return out


def bn_momentum_of(run) -> float | None:
    """Largest BatchNormalization momentum in the run's ``.keras`` architecture (read from its config
    without building the model); None when there is none or the file is not a ``.keras`` archive."""
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


def thresholds_for(run, thresholds: Thresholds = Thresholds()) -> Thresholds:
    """``thresholds`` with the BatchNorm momentum read from the run's model file (authoritative, also for
    imported runs) when it has one."""
    from dataclasses import replace

    mom = bn_momentum_of(run)
    return replace(thresholds, bn_momentum=mom) if mom is not None else thresholds
