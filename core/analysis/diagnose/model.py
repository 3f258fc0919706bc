"""What a finding is: kinds, severities, the view that shows it, thresholds, and plain-text/table output."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

KINDS = ("nan_inf", "dead_channels", "activation_collapse", "activation_explosion", "gates_off", "gates_open",
         "gates_half", "gate_product", "bn_stat_mismatch", "bn_mode_gap", "update_ratio", "stalled",
         "input_scaling")
SEVERITIES = ("problem", "warning", "info")
RANK = {s: i for i, s in enumerate(SEVERITIES)}
KIND_RANK = {k: i for i, k in enumerate(KINDS)}


@dataclass(frozen=True)
class View:
    """Where the app shows a finding: a page name (``overview``, ``grid``, ``dynamics``, ``gates``, ``weights``)
    and what to select there; the UI turns it into a URL or a page switch."""

    page: str
    layer: str = ""  # tap or weight layer to select ("" = keep the current one)
    block: str = ""  # SE block to select on the gates page
    checkpoint: int = 0


@dataclass(frozen=True)
class Advice:
    """What usually causes a finding, what to try, and what this run says about the likely cause."""

    causes: str
    remedy: str
    observed: str = ""  # one sentence of evidence read from the run that tells the causes apart


@dataclass(frozen=True)
class Finding:
    """One diagnosis.

    ``kind`` is one of :data:`KINDS`; ``severity`` one of :data:`SEVERITIES`; ``layers`` every
    layer (tap, BatchNorm layer, weight layer or SE block) the finding covers, in depth order;
    ``layer`` the one it names first; ``mini_epoch`` the first mini-epoch where it holds;
    ``message`` one plain sentence; ``evidence`` the numbers behind it; ``view`` where the app
    shows it; ``advice`` causes, remedy and the run's distinguishing evidence.
    """

    kind: str
    severity: str
    layers: tuple[str, ...]
    mini_epoch: int
    message: str
    evidence: dict[str, Any] = field(default_factory=dict, hash=False)
    layer: str = ""
    view: View = View("overview")
    advice: Advice | None = None

    @property
    def page(self) -> str:
        return self.view.page

    @property
    def checkpoint(self) -> int:
        return self.view.checkpoint

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (non-finite numbers become None)."""
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["evidence"] = {k: _json_num(v) for k, v in self.evidence.items()}
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
    # activation_collapse / activation_explosion: layer std (median over probes) against its baseline, the
    # first judged checkpoint (mini-epoch 0 only for layers with no BatchNorm before them: the trap).
    scale_factor: float = 10.0  # std fell by at least this factor -> collapse (problem); rose -> explosion
    scale_problem_factor: float = 100.0  # explosion: problem from here (or when the training loss rose)
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


def findings_frame(findings: Sequence[Finding]) -> pd.DataFrame:
    """One row per finding (for tables): severity, kind, mini_epoch, layer, layers, message, page, checkpoint."""
    cols = ["severity", "kind", "mini_epoch", "layer", "layers", "message", "page", "checkpoint"]
    return pd.DataFrame([{"severity": f.severity, "kind": f.kind, "mini_epoch": f.mini_epoch, "layer": f.layer,
                          "layers": ", ".join(f.layers), "message": f.message, "page": f.view.page,
                          "checkpoint": f.view.checkpoint} for f in findings], columns=cols)


def format_findings(findings: Sequence[Finding], run: str = "", advice: bool = False) -> str:
    """Plain-text table: one line per finding (severity, kind, mini-epoch, layer, message); with ``advice``
    each finding is followed by its likely causes, what to try and the run's evidence."""
    if not findings:
        return f"no findings for {run or 'this run'}\n"
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    head = (f"{len(findings)} finding{'s' if len(findings) != 1 else ''} for {run or 'this run'}: "
            + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    rows = [("SEVERITY", "KIND", "ME", "LAYER", "FINDING")]
    rows += [(f.severity.upper(), f.kind, str(f.mini_epoch), f.layer, f.message) for f in findings]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [head, "  ".join(rows[0][i].ljust(w[i]) for i in range(4)) + "  " + rows[0][4]]
    for f, r in zip(findings, rows[1:]):
        lines.append("  ".join(r[i].ljust(w[i]) for i in range(4)) + "  " + r[4])
        if advice and f.advice is not None:
            pad = " " * (sum(w) + 8)
            for label, text in (("usually", f.advice.causes), ("try", f.advice.remedy),
                                ("this run", f.advice.observed)):
                if text:
                    lines.append(f"{pad}{label}: {text}")
    return "\n".join(lines) + "\n"


def pct(x: float) -> str:
    return f"{100 * x:.0f} %"
