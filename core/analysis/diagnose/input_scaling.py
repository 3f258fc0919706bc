"""Rule ``input_scaling``: the first layers see pixels scaled unlike in training (send the user to the input)."""
from __future__ import annotations

import math
from typing import Any

from core.analysis.diagnose.context import Ctx, manifest_get
from core.analysis.diagnose.model import Finding

#: Orders of magnitude between the first BatchNorm's probe-batch statistics and its moving ones that
#: no training drift explains: a variance ratio beyond 100x either way, or a mean 10 moving std away.
VAR_RATIO = 100.0
MEAN_SHIFT = 10.0


def _scaling(manifest: Any) -> tuple[str, bool]:
    """(the run's pixel scaling as words, whether it is a guess)."""
    from core.run.preprocess import PreprocessSpec

    raw = manifest_get(manifest, "preprocessing") or (manifest_get(manifest, "input") or {}).get("preprocessing")
    try:
        spec = PreprocessSpec.from_dict(raw) if raw else None
    except ValueError:
        spec = None
    return (spec.describe(), spec.is_guess) if spec is not None else ("unknown", True)


def rule_input_scaling(ctx: Ctx) -> list[Finding]:
    """At the last judged checkpoint, the first BatchNorm layer's batch statistics on the probes are orders
    of magnitude from its moving statistics: the probes are most likely scaled differently from training."""
    bn = ctx.table("bn_batch")
    if not len(bn) or not ctx.bn_layers:
        return []
    first = ctx.bn_layers[0]
    rows = bn[bn["layer"].astype(str) == first].sort_values("mini_epoch")
    rows = rows[[ctx.judged(int(m), first) for m in rows["mini_epoch"]]]
    if not len(rows):
        return []
    r = rows.iloc[-1]
    m, shift, ratio = int(r["mini_epoch"]), float(r["mean_shift"]), float(r["var_ratio"])
    if not (math.isfinite(shift) and math.isfinite(ratio)):
        return []
    off = ratio > VAR_RATIO or ratio < 1 / VAR_RATIO or shift > MEAN_SHIFT
    if not off:
        return []
    scaling, guess = _scaling(getattr(ctx, "manifest", None))
    msg = (f"At mini-epoch {m} the first BatchNorm layer, {first}, sees probe activations whose variance is "
           f"{ratio:.3g}x its moving variance (mean {shift:.3g} moving std away): the probe pixels are most likely "
           f"scaled differently from the training data (this run's pixel scaling: {scaling}). Fix the scaling "
           "first (import --preprocessing, or Pixel scaling in the app's sidebar); BatchNorm and SE gate findings "
           "of this run may only be its consequence.")
    return [Finding("input_scaling", "problem" if guess else "warning", (first,), m, msg,
                    {"mean_shift": shift, "var_ratio": ratio, "scaling": scaling, "scaling_is_guess": guess},
                    layer=first, view=ctx.view("dynamics", first, m))]
