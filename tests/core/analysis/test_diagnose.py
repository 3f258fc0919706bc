"""Diagnostic rules on tiny real runs with planted pathologies (checkpoint weights edited directly).

Every planted run is built once per module and swept once; the sweeps share one
``RunEngine`` per architecture (a copy with its ``run`` swapped), which skips the
model build and tracing that dominate a tiny sweep.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from core.analysis.diagnose import (
    KINDS, SEVERITIES, TEXTS, Finding, Thresholds, View, bn_momentum_of, diagnose, findings_frame, format_findings,
    scale_table,
)
from core.run.runs import Run
from core.analysis.sweep import SweepResult, sweep
from tests.fixtures import (
    copy_run, corrupt_bn_stats, make_tiny_run, plant_dead_channels, plant_se_gates, plant_shrink,
)

K = 3  # onset of the planted pathologies in the no-BN runs (mini-epochs 0..5)
K_BN = 2  # onset in copies of the session's tiny BN run (mini-epochs 0..3)


# -- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("diag")


class _Sweeper:
    """Sweeps runs of one architecture with a shared engine (built on the first run)."""

    def __init__(self):
        self.engines: dict[bool, object] = {}

    def __call__(self, run: Run, table: bool = False) -> tuple[SweepResult, list[Finding]]:
        from core.engine.engine import RunEngine

        bn = bool(run.manifest.training["arch"]["batchnorm"])
        if bn not in self.engines:
            self.engines[bn] = RunEngine(run)
            engine = self.engines[bn]
        else:
            engine = copy.copy(self.engines[bn])
            engine.run = run
        result = sweep(run, engine=engine)
        th = Thresholds(bn_momentum=bn_momentum_of(run))
        found = diagnose(result, run.history(), run.manifest, th)
        if table:
            return result, found, scale_table(result, run.history(), run.manifest, th)
        return result, found


@pytest.fixture(scope="module")
def sweeper() -> _Sweeper:
    return _Sweeper()


@pytest.fixture(scope="module")
def healthy(runs_root, root, sweeper):
    return sweeper(copy_run(runs_root / "tiny", root / "tiny"))


@pytest.fixture(scope="module")
def healthy10(root, sweeper):
    return sweeper(make_tiny_run(root, "healthy10", mini_epochs=10, learning_rate=1e-3))


@pytest.fixture(scope="module")
def nobn(root) -> Path:
    return make_tiny_run(root, "nobn", arch={"batchnorm": False}, mini_epochs=5).path


@pytest.fixture(scope="module")
def dead(nobn, root, sweeper):
    run = copy_run(nobn, root / "dead")
    plant_dead_channels(run, K, "block2_conv1", range(7))  # 7 of 12 channels
    return sweeper(run)


@pytest.fixture(scope="module")
def shrink(nobn, root, sweeper):
    run = copy_run(nobn, root / "shrink")
    plant_shrink(run, K, "block2_conv1", factor=0.02)
    return sweeper(run)


@pytest.fixture(scope="module", params=[10, 30])
def planted_shrink(request, nobn, root, sweeper):
    """A 10x / 30x shrink of block2_conv1 from mini-epoch K on (a step, then the same factor again)."""
    run = copy_run(nobn, root / f"shrink{request.param}")
    plant_shrink(run, K, "block2_conv1", factor=1 / request.param)
    return (request.param, *sweeper(run, table=True))


@pytest.fixture(scope="module")
def gates(runs_root, root, sweeper):
    run = copy_run(runs_root / "tiny", root / "gates")
    plant_se_gates(run, K_BN, "block1", "off")
    plant_se_gates(run, K_BN, "block2", "open")
    plant_se_gates(run, K_BN, "block3", "half")
    return sweeper(run)


@pytest.fixture(scope="module")
def bn_stem(runs_root, root, sweeper):
    run = copy_run(runs_root / "tiny", root / "bn-stem")
    corrupt_bn_stats(run, K_BN, "stem_bn")
    return sweeper(run)


@pytest.fixture(scope="module")
def bn_all(runs_root, root, sweeper):
    run = copy_run(runs_root / "tiny", root / "bn-all")
    for bn in ("stem_bn", "block1_bn1", "block2_bn1", "block2_bn2", "block3_bn1"):
        corrupt_bn_stats(run, K_BN, bn)
    return sweeper(run)


@pytest.fixture(scope="module")
def nan(runs_root, root, sweeper):
    return sweeper(copy_run(runs_root / "tiny-nan", root / "nan"))  # NaN kernel from mini-epoch 2


def _only(findings: list[Finding], kind: str, **where) -> Finding:
    hits = [f for f in findings if f.kind == kind and all(getattr(f, k) == v for k, v in where.items())]
    assert len(hits) == 1, f"expected one {kind} {where}, got:\n{format_findings(findings)}"
    return hits[0]


def _severe(findings, levels=("problem",)) -> list[Finding]:
    return [f for f in findings if f.severity in levels]


# -- healthy controls ---------------------------------------------------------------------------------------
def test_healthy_tiny_run_has_no_problem_and_explains_the_bn_trap(healthy):
    result, findings = healthy
    assert not _severe(findings, ("problem", "warning")), format_findings(findings)
    # mini-epoch 0 (and the whole short run) is the BatchNorm trap: explained, never called a collapse
    trap = _only(findings, "bn_stat_mismatch", severity="info")
    assert trap.mini_epoch == 0 and "initial values" in trap.message
    assert not [f for f in findings if f.kind.startswith("activation_")]


def test_healthy_ten_checkpoint_run_has_no_problem(healthy10):
    result, findings = healthy10
    assert len(result.mini_epochs) == 11
    assert not _severe(findings), format_findings(findings)


# -- planted pathologies ------------------------------------------------------------------------------------
def test_dead_channels_found_at_their_layer_and_onset(dead):
    _, findings = dead
    f = _only(findings, "dead_channels", layer="block2_act1")
    assert f.mini_epoch == K and f.severity == "problem"
    assert f.layers[0] == "block2_act1" and f.page == "grid" and f.checkpoint == K
    assert f.evidence["frac_dead"] >= 7 / 12 - 1e-9
    assert "block2_act1" in f.message and f"mini-epoch {K}" in f.message


def test_progressive_shrink_is_a_collapse_with_its_onset_depth(shrink):
    _, findings = shrink
    f = _only(findings, "activation_collapse", mini_epoch=K)
    assert f.layer == "block2_conv1" and f.layers[0] == "block2_conv1"
    assert f.evidence["factor"] >= 10 and f.evidence["loss_rose"] is False
    assert f.view == View("dynamics", layer="block2_conv1", checkpoint=K) and "did not rise" in f.message


def test_planted_shrink_tops_the_scale_table_and_matches_the_finding(planted_shrink):
    factor, result, findings, table = planted_shrink
    top = table.iloc[0]
    assert (top["layer"], top["onset"], top["direction"]) == ("block2_conv1", K, "shrink")
    assert top["baseline_mini_epoch"] == 0  # no BatchNorm: mini-epoch 0 is judged
    # the table's numbers are the sweep's: median over probes of the layer std
    L = result.layers
    std = L[L["layer"].astype(str) == "block2_conv1"].groupby("mini_epoch")["std"].median()
    assert top["std_baseline"] == pytest.approx(std[0]) and top["std_last"] == pytest.approx(std.iloc[-1])
    assert top["shrink"] == pytest.approx(std[0] / std.min()) and top["change"] >= factor * 0.5
    f = _only(findings, "activation_collapse", layer="block2_conv1")
    assert (f.severity, f.mini_epoch) == ("problem", K)
    assert f.evidence["reference_std"] == pytest.approx(top["std_baseline"])
    assert f.evidence["factor_max"] == pytest.approx(top["change"])
    crossed = table[table["onset"] >= 0]
    assert set(f.layers) == set(crossed[crossed["group"] == top["group"]]["layer"])
    assert f.advice is not None and "weight decay" in f.advice.causes and f.advice.observed


def test_se_gates_off_open_and_half(gates):
    _, findings = gates
    off = _only(findings, "gates_off")
    assert (off.layer, off.mini_epoch, off.severity, off.page) == ("block1_se", K_BN, "problem", "gates")
    assert off.view == View("gates", block="block1_se", checkpoint=K_BN)  # opens the page with the block selected
    opn = _only(findings, "gates_open")
    assert (opn.layer, opn.mini_epoch) == ("block2_se", K_BN) and opn.severity in ("warning", "problem")
    half = _only(findings, "gates_half")
    assert (half.layer, half.mini_epoch) == ("block3_se", K_BN) and "squeeze path is dead" in half.message
    prod = _only(findings, "gate_product")
    assert prod.mini_epoch == K_BN and prod.severity == "problem" and prod.layer == "block1_se"
    assert prod.evidence["product"] < 1e-6


def test_corrupted_bn_moving_statistics(bn_stem, bn_all):
    _, findings = bn_stem
    f = _only(findings, "bn_stat_mismatch", severity="problem")
    assert (f.layer, f.layers, f.mini_epoch, f.page) == ("stem_bn", ("stem_bn",), K_BN, "weights")
    _, findings = bn_all
    f = _only(findings, "bn_stat_mismatch", severity="problem")
    assert f.layer == "stem_bn" and f.mini_epoch == K_BN and len(f.layers) == 5  # grouped, not 5 findings
    gap = _only(findings, "bn_mode_gap")
    assert gap.mini_epoch == K_BN and gap.severity == "problem"
    assert gap.evidence["loss"] > gap.evidence["loss_train_mode"]


def test_nan_found_at_first_checkpoint_and_first_layer(nan):
    _, findings = nan
    f = _only(findings, "nan_inf")
    assert (f.layer, f.mini_epoch, f.severity, f.page) == ("block1_conv1", 2, "problem", "weights")
    assert f.evidence["n_nonfinite_weights"] > 0 and f.evidence["n_nonfinite_activations"] > 0
    # nothing else is judged on the diverged checkpoints
    assert all(g.mini_epoch < 2 for g in findings if g is not f and g.severity != "info")


# -- shape of the output ------------------------------------------------------------------------------------
def test_findings_are_sorted_grouped_and_well_formed(dead, shrink, gates, bn_all, nan):
    for _, findings in (dead, shrink, gates, bn_all, nan):
        ranks = [(SEVERITIES.index(f.severity), f.mini_epoch) for f in findings]
        assert ranks == sorted(ranks)
        keys = [(f.kind, f.severity, f.mini_epoch, f.layer) for f in findings]
        assert len(keys) == len(set(keys))
        for f in findings:
            assert f.kind in KINDS and f.layer in f.layers
            assert f.message.endswith(".") and str(f.mini_epoch) in f.message
            d = f.to_dict()
            json.dumps(d, allow_nan=False)
            assert d["view"]["page"] == f.view.page and f.layer in (f.view.layer, f.view.block)
            assert f.advice is not None and f.advice.causes and f.advice.remedy
            assert (f.advice.causes, f.advice.remedy) == TEXTS[f.kind] or f.severity == "info"
        assert list(findings_frame(findings)["kind"]) == [f.kind for f in findings]


def test_cli_prints_a_table_and_json(nan, root, capsys):
    from core.cli import add_diagnose

    parser = argparse.ArgumentParser()
    add_diagnose(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["diagnose", "nan", "--runs-root", str(root), "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [d["kind"] for d in out][0] == "nan_inf" and out[0]["view"]["page"] == "weights"
    args = parser.parse_args(["diagnose", str(root / "nan")])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "PROBLEM" in text and "nan_inf" in text and "block1_conv1" in text


# -- rules on synthetic tables (no TensorFlow) --------------------------------------------------------------
def _weights_result(ratios: dict[int, float], dist: dict[int, float] | None = None) -> SweepResult:
    rows = [{"run": "r", "mini_epoch": m, "layer": "conv", "variable": "kernel", "norm": 1.0,
             "dist_from_init": (dist or {}).get(m, 0.1 * m), "rel_dist_from_init": 0.1 * m, "update_norm": r,
             "update_ratio": r, "n_nan": 0, "n_inf": 0} for m, r in ratios.items()]
    return SweepResult("r", ("probe:000",), tables={"weights": pd.DataFrame(rows)})


MANIFEST = {"mini_epoch_images": 1000, "training": {"batch_size": 10}, "class_names": ["a", "b", "c", "d"]}


def test_update_ratio_is_judged_per_step_from_the_manifest():
    res = _weights_result({0: math.nan, 1: 0.1, 2: 200.0, 3: 1e-5})  # 100 steps between checkpoints
    findings = diagnose(res, manifest=MANIFEST)
    assert [(f.mini_epoch, f.severity) for f in findings if f.kind == "update_ratio"] == [
        (2, "problem"), (3, "warning")]
    hi = findings[0]
    assert hi.evidence["per_step"] == pytest.approx(2.0) and hi.evidence["steps"] == 100
    assert "too high" in hi.message
    assert not [f for f in diagnose(res) if f.kind == "update_ratio"]  # steps unknown: not judged


def test_stalled_distance_from_init_while_loss_is_high():
    dist = {0: 0.0, 1: 1.0, 2: 2.0, 3: 2.001, 4: 2.002, 5: 2.003}
    res = _weights_result({m: 1e-3 for m in dist}, dist)
    hist = pd.DataFrame({"mini_epoch": [1, 2, 3, 4, 5], "loss": [1.39, 1.38, 1.38, 1.38, 1.38],
                         "images_seen": [1000, 2000, 3000, 4000, 5000], "lr": [1e-3] * 5})
    f = _only(diagnose(res, hist, MANIFEST), "stalled")
    assert f.mini_epoch == 5 and f.severity == "problem"  # 1.38 ~ ln 4: nothing learned
    hist["loss"] = [1.0, 0.5, 0.2, 0.1, 0.05]
    assert not [f for f in diagnose(res, hist, MANIFEST) if f.kind == "stalled"]


def test_thresholds_are_parameters():
    res = _weights_result({0: math.nan, 1: 0.5})  # 5e-3 per step: fine by default
    assert not diagnose(res, manifest=MANIFEST)
    f = _only(diagnose(res, manifest=MANIFEST, thresholds=Thresholds(update_high=1e-3)), "update_ratio")
    assert f.mini_epoch == 1


def test_empty_result_gives_no_findings():
    assert diagnose(SweepResult("r", ())) == []
    assert format_findings([], "r").startswith("no findings")
    assert Finding("nan_inf", "problem", ("a",), 1, "m.", {"x": math.inf}).to_dict()["evidence"]["x"] is None
