"""core.analysis.compare: shared layers, aligned tables and biggest differences (exact answers on hand-made tables)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.analysis import compare as C
from core.render import compare_charts as CC
from core.run.images import fit_probe
from core.analysis.sweep import SweepResult


# ---- hand-made sweep results -------------------------------------------------------------------------


def _result(run: str, std: dict[tuple[int, str], list[float]], widths: dict[str, int],
            zeros: dict[tuple[int, str], list[list[float]]] | None = None,
            gates: dict[tuple[int, str], list[tuple[float, float]]] | None = None,
            order: tuple[str, ...] | None = None, blocks: tuple[str, ...] = ()) -> SweepResult:
    """std[(me, layer)] = per-probe layer std; zeros[(me, layer)][probe][channel] = frac_zero (a ReLU output:
    max 0 where frac_zero is 1);
    gates[(me, block)] = per-probe (frac_low, frac_high)."""
    order = order or tuple(dict.fromkeys(l for _, l in std))
    depth = {l: i for i, l in enumerate(order)}
    lrows = [{"run": run, "mini_epoch": me, "probe": p, "layer": l, "std": v, "depth": depth[l], "kind": "conv"}
             for (me, l), vals in std.items() for p, v in enumerate(vals)]
    crows = []
    mes = sorted({me for me, _ in std})
    for me in mes:
        for l in order:
            per_probe = (zeros or {}).get((me, l))
            n_probes = len(per_probe) if per_probe else 2
            for p in range(n_probes):
                for c in range(widths[l]):
                    fz = per_probe[p][c] if per_probe else 0.0
                    crows.append({"run": run, "mini_epoch": me, "probe": p, "layer": l, "channel": c,
                                  "frac_zero": fz, "max": 0.0 if fz >= 1 else 1.0, "mean": 0.0})
    grows = [{"run": run, "mini_epoch": me, "probe": p, "block": b, "frac_low": lo, "frac_high": hi,
              "frac_half": 0.0, "mean": 0.5, "std": 0.1}
             for (me, b), vals in (gates or {}).items() for p, (lo, hi) in enumerate(vals)]
    tables = {"layers": pd.DataFrame(lrows), "channels": pd.DataFrame(crows), "gates": pd.DataFrame(grows)}
    return SweepResult(run, ("p0", "p1"), tables, layer_order=order, se_blocks=blocks)


def _pair() -> tuple[SweepResult, SweepResult]:
    """Runs a and b (same architecture) that differ in conv1 std at mini-epoch 2, act1 dead channels, gate off."""
    std_a = {(me, l): [1.0, 1.0] for me in (0, 1, 2) for l in ("conv1", "act1")}
    std_b = dict(std_a)
    std_b[(0, "conv1")] = [1e-4, 1e-4]  # huge, but mini-epoch 0 is skipped by default
    std_b[(1, "conv1")] = [0.05, 0.15]  # mean 0.1
    std_b[(2, "conv1")] = [0.01, 0.01]
    widths = {"conv1": 2, "act1": 2}
    zeros_b = {(1, "act1"): [[1.0, 0.2], [1.0, 0.0]]}  # channel 0 zero on both probes: 1 of 2 dead
    gates_a = {(me, "blk"): [(0.2, 0.0), (0.2, 0.0)] for me in (0, 1, 2)}
    gates_b = dict(gates_a)
    gates_b[(2, "blk")] = [(0.4, 0.0), (0.5, 0.0)]  # frac_low mean 0.45 vs 0.2
    a = _result("a", std_a, widths, gates=gates_a, blocks=("blk",))
    b = _result("b", std_b, widths, zeros=zeros_b, gates=gates_b, blocks=("blk",))
    return a, b


# ---- shared layers -------------------------------------------------------------------------------------


def test_same_architecture_compares_every_layer():
    a, b = _pair()
    m = C.shared_layers([a, b])
    assert m.same_architecture
    assert m.shared == ("conv1", "act1") and m.shared_blocks == ("blk",)
    assert m.not_shared() == {} and m.widths_differ == ()
    assert m.message() == "Same architecture: all 2 layers and 1 SE blocks are compared."


def test_different_architectures_compare_on_shared_names_and_say_what_is_left_out():
    a = _result("a", {(0, "conv1"): [1, 1], (0, "gate"): [1, 1], (0, "conv2"): [1, 1]},
                {"conv1": 2, "gate": 2, "conv2": 3}, blocks=("blk",))
    b = _result("b", {(0, "conv1"): [1, 1], (0, "conv2"): [1, 1], (0, "extra"): [1, 1]},
                {"conv1": 2, "conv2": 5, "extra": 1})
    m = C.shared_layers([a, b])
    assert not m.same_architecture
    assert m.shared == ("conv1", "conv2")
    assert m.only == (("gate",), ("extra",))
    assert m.shared_blocks == () and m.blocks_only == (("blk",), ())
    assert m.widths_differ == (("conv2", (3, 5)),)
    msg = m.message()
    assert msg.startswith("Different architectures: compared on the 2 layers they share.")
    assert "Only in a (not compared): gate." in msg and "Only in b (not compared): extra." in msg
    assert "conv2 (3 vs 5)" in msg


def test_same_names_different_widths_is_not_the_same_architecture():
    a = _result("a", {(0, "conv1"): [1, 1]}, {"conv1": 4})
    b = _result("b", {(0, "conv1"): [1, 1]}, {"conv1": 8})
    m = C.shared_layers([a, b])
    assert not m.same_architecture and m.shared == ("conv1",) and m.not_shared() == {}
    assert m.widths_differ == (("conv1", (4, 8)),)


# ---- aligned tables ------------------------------------------------------------------------------------


def test_layer_series_is_the_mean_over_probes():
    a, b = _pair()
    s = C.layer_series([a, b], ["conv1"], stats=("std",))
    got = s.set_index(["run", "mini_epoch"])["std"]
    assert got[("b", 1)] == pytest.approx(0.1)
    assert got[("a", 2)] == 1.0 and got[("b", 2)] == pytest.approx(0.01)
    assert set(s["layer"]) == {"conv1"} and list(s.columns) == ["run", "mini_epoch", "layer", "depth", "std"]


def test_dead_channels_are_zero_on_every_probe():
    from core.analysis.stats import dead_channels

    a, b = _pair()
    d = C.dead_fractions([a, b], ["act1"]).set_index(["run", "mini_epoch"])
    assert d.loc[("b", 1), "n_dead"] == 1 and d.loc[("b", 1), "n_channels"] == 2
    assert d.loc[("b", 1), "frac_dead"] == 0.5
    assert d.loc[("a", 1), "frac_dead"] == 0.0 and d.loc[("b", 2), "frac_dead"] == 0.0
    # one definition of "dead" (never positive on any probe): the same counts as the statistics module's
    ch = b.channels[b.channels["layer"] == "act1"]
    ref = dead_channels(ch).set_index("mini_epoch")
    assert d.loc["b", "n_dead"].tolist() == ref["n_dead"].tolist()


def test_gate_saturation_is_the_mean_over_probes():
    a, b = _pair()
    g = C.gate_saturation([a, b]).set_index(["run", "mini_epoch", "block"])
    assert g.loc[("b", 2, "blk"), "frac_low"] == pytest.approx(0.45)
    assert g.loc[("a", 2, "blk"), "frac_low"] == pytest.approx(0.2)


def test_add_images_seen_uses_each_runs_own_history():
    maps = {"a": pd.DataFrame({"mini_epoch": [0, 1], "images_seen": [0.0, 100.0]}),
            "b": pd.DataFrame({"mini_epoch": [0, 1], "images_seen": [0.0, 50.0]})}
    df = pd.DataFrame({"run": ["a", "b", "b"], "mini_epoch": [1, 1, 0], "v": [1, 2, 3]})
    out = C.add_images_seen(df, maps)
    assert out["images_seen"].tolist() == [100.0, 50.0, 0.0]


# ---- scores and biggest differences -----------------------------------------------------------------


def test_score_values():
    assert C.score_values("std", [1.0, 100.0]) == pytest.approx((2.0, 100.0, 99.0))
    s, r, d = C.score_values("frac_dead", [0.1, 0.6])
    assert s == pytest.approx(1.0) and math.isnan(r) and d == pytest.approx(0.5)
    assert all(math.isnan(v) for v in C.score_values("std", [1.0, float("nan")]))
    # a dead layer (std 0) gives a large, finite ratio
    assert C.score_values("std", [0.0, 1.0])[1] == pytest.approx(1.0 / C.STD_FLOOR)


def test_biggest_differences_exact():
    a, b = _pair()
    d = C.biggest_differences([a, b])
    assert list(d.columns) == ["layer", "statistic", "mini_epoch", "images_seen", "a", "b", "ratio", "difference",
                               "score"]
    assert d[["layer", "statistic", "mini_epoch"]].values.tolist() == [
        ["conv1", "std", 2], ["act1", "frac_dead", 1], ["blk", "frac_low", 2]]
    top = d.iloc[0]
    assert top["a"] == 1.0 and top["b"] == pytest.approx(0.01)
    assert top["ratio"] == pytest.approx(100.0) and top["score"] == pytest.approx(2.0)
    assert d.iloc[1]["difference"] == 0.5 and d.iloc[1]["score"] == pytest.approx(1.0)
    assert d.iloc[2]["difference"] == pytest.approx(0.25) and d.iloc[2]["score"] == pytest.approx(0.5)
    assert len(C.biggest_differences([a, b], top=2)) == 2


def test_biggest_differences_can_include_the_initialisation():
    a, b = _pair()
    d = C.biggest_differences([a, b], from_mini_epoch=0)
    top = d.iloc[0]
    assert (top["layer"], top["statistic"], top["mini_epoch"]) == ("conv1", "std", 0)
    assert top["ratio"] == pytest.approx(1e4)


def test_biggest_differences_aligned_by_images_seen():
    """a: 100 images per mini-epoch; b: 50. a's mini-epoch 2 (200 images) meets b's mini-epoch 4."""
    widths = {"conv1": 1}
    a = _result("a", {(me, "conv1"): [1.0, 1.0] for me in (0, 1, 2)}, widths)
    std_b = {(me, "conv1"): [1.0, 1.0] for me in range(5)}
    std_b[(4, "conv1")] = [0.01, 0.01]
    b = _result("b", std_b, widths)
    hist = {"a": pd.DataFrame({"mini_epoch": [1, 2], "images_seen": [100.0, 200.0]}),
            "b": pd.DataFrame({"mini_epoch": [1, 2, 3, 4], "images_seen": [50.0, 100.0, 150.0, 200.0]})}
    by_seen = C.biggest_differences([a, b], histories=hist, align="images_seen")
    assert by_seen[["layer", "mini_epoch", "images_seen"]].values.tolist() == [["conv1", 2, 200.0]]
    assert by_seen.iloc[0]["ratio"] == pytest.approx(100.0)
    assert C.biggest_differences([a, b], histories=hist, align="mini_epoch").empty  # same number: equal std


def test_biggest_differences_needs_two_runs_and_a_valid_alignment():
    a, _ = _pair()
    assert C.biggest_differences([a]).empty
    with pytest.raises(ValueError):
        C.biggest_differences([a, a], align="wall_time")


def test_match_checkpoints():
    maps = {"a": pd.DataFrame({"mini_epoch": [0, 1, 2], "images_seen": [0.0, 100.0, 200.0]}),
            "b": pd.DataFrame({"mini_epoch": [0, 1, 2, 3, 4], "images_seen": [0.0, 50.0, 100.0, 150.0, 200.0]}),
            "c": pd.DataFrame({"mini_epoch": [0, 1], "images_seen": [0.0, 300.0]})}
    assert C.match_checkpoints(maps, "a", 1, "images_seen") == {"a": 1, "b": 2, "c": 0}
    assert C.match_checkpoints(maps, "a", 2, "mini_epoch") == {"a": 2, "b": 2, "c": None}


def test_fit_probe_and_shared_range():
    img = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    assert fit_probe(img, (4, 4, 3)) is img
    assert fit_probe(img, (8, 8, 3)).shape == (8, 8, 3)
    grey = fit_probe(img, (4, 4, 1))
    assert grey.shape == (4, 4, 1) and grey[0, 0, 0] == 1  # mean of 0, 1, 2
    assert C.shared_range([np.array([[-1.0, 2.0]]), np.array([[np.nan, 5.0]])]) == (-1.0, 5.0)
    assert C.shared_range([np.array([np.nan])]) is None


def test_charts_build_and_say_when_data_is_missing():
    a, b = _pair()
    s = C.layer_series([a, b], ["conv1"], stats=("std",))
    assert CC.overlay_chart(s, "std", ["a", "b"], log=True).to_dict()["mark"]["type"] == "line"
    assert "No std" in str(CC.overlay_chart(s.iloc[:0], "std", ["a", "b"]).to_dict())
    g = C.gate_saturation([a, b])
    assert "facet" in CC.gate_saturation_chart(g, ["a", "b"]).to_dict()
    assert "No SE blocks shared" in str(CC.gate_saturation_chart(g.iloc[:0], ["a", "b"]).to_dict())


# ---- real runs: a copy of tiny with the stem convolution shrunk -------------------------------------------


def compare_root(tmp_path_factory, runs_root: Path) -> Path:
    """tiny, tiny-shrunk (stem_conv kernel x0.05 at mini-epoch 2, x0.0025 at 3) and tiny-nose, made once."""
    from tests.fixtures import copy_run, plant_shrink

    root = tmp_path_factory.getbasetemp() / "compare-runs"
    if not (root / ".done").exists():
        root.mkdir(exist_ok=True)
        copy_run(runs_root / "tiny", root / "tiny")
        plant_shrink(copy_run(runs_root / "tiny", root / "tiny-shrunk"), 2, "stem_conv", 0.05)
        copy_run(runs_root / "tiny-nose", root / "tiny-nose")
        (root / ".done").touch()
    return root


@pytest.fixture(scope="module")
def croot(tmp_path_factory, runs_root) -> Path:
    return compare_root(tmp_path_factory, runs_root)


def test_planted_shrink_is_the_biggest_difference(croot):
    from core.run.runs import Run
    from core.analysis.sweep import sweep

    runs = [Run(croot / "tiny"), Run(croot / "tiny-shrunk")]
    results = [sweep(r) for r in runs]
    m = C.shared_layers(results)
    assert m.same_architecture and len(m.shared) == len(results[0].layer_order)
    d = C.biggest_differences(results, histories={r.name: r.history() for r in runs})
    top = d.iloc[0]
    assert (top["layer"], top["statistic"], top["mini_epoch"], top["images_seen"]) == ("stem_conv", "std", 3, 384.0)
    assert top["ratio"] == pytest.approx(400.0, rel=1e-4)  # 0.05 ** 2: a linear layer without bias
    assert top["tiny"] == pytest.approx(400.0 * top["tiny-shrunk"], rel=1e-4)
    nose = sweep(Run(croot / "tiny-nose"))
    m2 = C.shared_layers([results[0], nose])
    assert not m2.same_architecture and m2.shared_blocks == () and m2.not_shared()["tiny"]
    assert set(m2.shared) == set(nose.layer_order)
