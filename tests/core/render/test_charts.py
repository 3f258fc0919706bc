"""core.render.charts: exact data preparation, and every chart builds a valid spec with hover tooltips."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from core.analysis.axes import x_map
from core.render import charts as C


def history() -> pd.DataFrame:
    return pd.DataFrame({"mini_epoch": [1, 2, 3], "images_seen": [100.0, 200.0, 300.0],
                         "loss": [2.0, 1.5, 1.2], "val_loss": [2.1, 1.7, np.nan], "accuracy": [0.1, 0.3, 0.5],
                         "val_accuracy": [0.1, 0.2, 0.4], "lr": [1e-3] * 3, "wall_time": [1.0, 2.0, 3.0]})


def layers_table() -> pd.DataFrame:
    """Two layers x mini-epochs 0..3 x two probes; layer b shrinks 10x from mini-epoch 1 to 3."""
    rows = []
    for me in range(4):
        for probe in (0, 1):
            rows.append({"mini_epoch": me, "probe": probe, "layer": "a", "depth": 0, "kind": "conv",
                         "min": -1.0, "max": 1.0, "mean": 0.0, "std": 1.0 + probe, "mean_abs": 0.5,
                         "frac_dead_channels": 0.0})
            std_b = {0: 0.01, 1: 2.0, 2: 1.0, 3: 0.2}[me] * (1 + probe)
            rows.append({"mini_epoch": me, "probe": probe, "layer": "b", "depth": 1, "kind": "se_hidden",
                         "min": 0.0, "max": 3.0, "mean": 1.0, "std": std_b, "mean_abs": 1.0,
                         "frac_dead_channels": 0.0})
    df = pd.DataFrame(rows)
    df["layer"] = df["layer"].astype("category")
    return df


def gates_table() -> pd.DataFrame:
    rows = []
    for me in (0, 1):
        for probe in (0, 1):
            for block, mean in (("b1", 0.5), ("b2", 0.4 if me == 0 else 0.1)):
                rows.append({"mini_epoch": me, "probe": probe, "block": block, "mean": mean + 0.1 * probe,
                             "std": 0.1, "frac_low": 0.0, "frac_high": 0.1 * me, "frac_half": 1.0 - me})
    return pd.DataFrame(rows)


def tooltips(spec) -> list[dict]:
    """Every encoding block with a mark (single, layered or concatenated views) of a Vega-Lite spec."""
    out = []
    if isinstance(spec, dict):
        if "mark" in spec:
            out.append(spec.get("encoding", {}))
        for v in spec.values():
            out.extend(tooltips(v))
    elif isinstance(spec, list):
        for v in spec:
            out.extend(tooltips(v))
    return out


def assert_hover(chart) -> dict:
    spec = chart.to_dict()  # validates against the Vega-Lite schema
    encs = tooltips(spec)
    assert encs, "chart has no marks"
    assert any("tooltip" in e for e in encs), "chart has no tooltip"
    return spec


def test_x_map_from_history_and_fallback():
    m = x_map(history(), [0, 1, 2, 3, 4], mini_epoch_images=100)
    assert m["images_seen"].tolist() == [0.0, 100.0, 200.0, 300.0, 400.0]
    m = x_map(None, [0, 2], mini_epoch_images=50)
    assert m["images_seen"].tolist() == [0.0, 100.0]
    m = x_map(history(), [0, 5])
    assert m["images_seen"].iloc[0] == 0.0 and math.isnan(m["images_seen"].iloc[1])


def test_with_x_adds_images_seen_only_when_asked():
    df = pd.DataFrame({"mini_epoch": [0, 1, 3], "v": [1, 2, 3]})
    assert "images_seen" not in C.with_x(df, "mini_epoch", history())
    out = C.with_x(df, "images_seen", history())
    assert out["images_seen"].tolist() == [0.0, 100.0, 300.0]
    with pytest.raises(ValueError):
        C.with_x(df, "epoch")


def test_normalised_to_reference_exact():
    n = C.normalised_to_reference(layers_table(), "std", ref_mini_epoch=1)
    b = n[n["layer"] == "b"].set_index("mini_epoch")
    # mean over the two probes: (s + 2 s) / 2 = 1.5 s
    assert_allclose(b["value"], [0.015, 3.0, 1.5, 0.3])
    assert_allclose(b["ref"], 3.0)
    assert_allclose(b["ratio"], [0.005, 1.0, 0.5, 0.1])
    a = n[n["layer"] == "a"]
    assert_allclose(a["ratio"], 1.0)
    assert n["layer"].tolist()[:4] == ["a"] * 4  # depth order
    n0 = C.normalised_to_reference(layers_table(), "std", ref_mini_epoch=99)  # falls back to the first
    assert_allclose(n0[n0["layer"] == "b"]["ratio"].iloc[0], 1.0)


def test_normalised_to_reference_zero_reference_is_nan():
    t = layers_table()
    t.loc[(t["layer"] == "a") & (t["mini_epoch"] == 1), "std"] = 0.0
    n = C.normalised_to_reference(t, "std", 1)
    assert n[n["layer"] == "a"]["ratio"].isna().all()


def test_gate_product_cumulative_in_depth_order():
    p = C.gate_product(gates_table(), ["b1", "b2"])
    me1 = p[p["mini_epoch"] == 1].set_index("block")
    # mean over probes: b1 = 0.55, b2 = 0.15
    assert_allclose(me1.loc["b1", "product"], 0.55)
    assert_allclose(me1.loc["b2", "product"], 0.55 * 0.15)
    assert me1["position"].tolist() == [1, 2]
    rev = C.gate_product(gates_table(), ["b2", "b1"])
    assert_allclose(rev[(rev["mini_epoch"] == 0) & (rev["block"] == "b2")]["product"], 0.45)
    assert C.gate_product(pd.DataFrame(), ["b1"]).empty


def test_mean_over_probes_and_weights_by_layer():
    m = C.mean_over_probes(layers_table(), ["layer", "mini_epoch"], ["std"])
    assert_allclose(m[(m["layer"] == "a")]["std"], 1.5)
    w = pd.DataFrame({"mini_epoch": [0, 0], "layer": pd.Categorical(["c", "c"]),
                      "variable": pd.Categorical(["kernel", "bias"]), "norm": [1.0, 2.0]})
    k = C.weights_by_layer(w, "kernel")
    assert k["norm"].tolist() == [1.0] and not isinstance(k["layer"].dtype, pd.CategoricalDtype)


def test_activation_dynamics_two_axes_loss_and_log():
    rows = []
    for img in ("#0", "#1"):
        for me in range(3):
            rows.append({"image": img, "mini_epoch": me, "min": -1.0, "max": 2.0, "mean": 0.5, "std": 0.1 * (me + 1)})
    df = pd.DataFrame(rows)
    spec = assert_hover(C.activation_dynamics(df))
    assert spec["resolve"]["scale"]["y"] == "independent"
    spec = assert_hover(C.activation_dynamics(C.with_x(df, "images_seen", history()), x="images_seen", log=True,
                                              history=history()))
    assert "vconcat" in spec


def test_every_chart_has_tooltips():
    lt = layers_table()
    ch = pd.DataFrame({"channel": np.repeat([0, 1, 2], 3), "mini_epoch": np.tile([0, 1, 2], 3),
                       "std": [0.0, 1.0, 2.0] * 3, "mean": [-1.0, 0.0, 1.0] * 3})
    hist = pd.DataFrame({"mini_epoch": [0, 0, 1, 1], "bin_left": [0.0, 0.5] * 2, "bin_right": [0.5, 1.0] * 2,
                         "count": [3, 1, 0, 4]})
    gc = pd.DataFrame({"mini_epoch": [0, 0, 1, 1], "probe": [0, 0, 0, 0], "channel": [0, 1, 0, 1],
                       "gate": [0.5, 0.4, 0.9, 0.01], "logit": [0.0, -0.4, 2.2, -4.6]})
    charts = [
        C.training_curves(history()),
        C.channel_heatmap(ch, "std"),
        C.channel_heatmap(ch, "mean"),
        C.collapse_heatmap(C.normalised_to_reference(lt, "std", 1), 1),
        C.gate_histogram(hist[hist["mini_epoch"] == 0]),
        C.hist_evolution(hist),
        C.gate_fractions(gates_table()),
        C.lines_by(C.mean_over_probes(lt, ["layer", "mini_epoch"], ["mean_abs"]), "mean_abs", "layer", log=True),
        C.gate_channel_lines(gc),
        C.lines_by(C.gate_product(gates_table(), ["b1", "b2"]), "product", "block", log=True),
        C.channel_trajectory(pd.DataFrame({"mini_epoch": [0, 1], "min": [0.0, 0.1], "max": [1.0, 0.5],
                                           "mean": [0.5, 0.2], "std": [0.2, 0.1]})),
        C.loss_panel(history()),
    ]
    for c in charts:
        assert_hover(c)


def test_histograms_turn_counts_into_fractions():
    hist = pd.DataFrame({"mini_epoch": [0, 0], "bin_left": [0.0, 0.5], "bin_right": [0.5, 1.0], "count": [3, 1]})
    spec = C.gate_histogram(hist).to_dict()
    vals = next(iter(spec["datasets"].values()))
    assert [v["fraction"] for v in vals] == [0.75, 0.25]


def test_empty_inputs_give_placeholders():
    for c in (C.activation_dynamics(pd.DataFrame()), C.channel_heatmap(pd.DataFrame()),
              C.collapse_heatmap(pd.DataFrame()), C.gate_fractions(pd.DataFrame()),
              C.lines_by(pd.DataFrame(), "v", "layer"), C.gate_histogram(pd.DataFrame())):
        spec = c.to_dict()
        assert spec["mark"]["type"] == "text"
    allneg = pd.DataFrame({"layer": ["a"], "mini_epoch": [0], "v": [-1.0]})
    assert C.lines_by(allneg, "v", "layer", log=True).to_dict()["mark"]["type"] == "text"


def test_lines_by_many_series_colours_by_depth_without_legend():
    names = [f"l{i:02d}" for i in range(C.MAX_LEGEND + 3)]
    d = pd.DataFrame({"layer": np.repeat(names, 2), "mini_epoch": np.tile([0, 1], len(names)), "v": 1.0})
    depth = list(reversed(names)) + ["absent"]
    enc = tooltips(C.lines_by(d, "v", "layer", sort=depth).to_dict())[0]["color"]
    assert enc["legend"] is None and enc["scale"]["domain"] == list(reversed(names))
    few = tooltips(C.lines_by(d[d["layer"].isin(names[:3])], "v", "layer").to_dict())[0]["color"]
    assert few.get("legend") is not None


def _x_axes(spec, out=None) -> list[dict]:
    """Every quantitative mini_epoch x encoding in a Vega-Lite spec (any nesting)."""
    out = [] if out is None else out
    if isinstance(spec, dict):
        x = spec.get("encoding", {}).get("x") if isinstance(spec.get("encoding"), dict) else None
        if isinstance(x, dict) and x.get("field") == "mini_epoch" and x.get("type") == "quantitative":
            out.append(x)
        for v in spec.values():
            _x_axes(v, out)
    elif isinstance(spec, list):
        for v in spec:
            _x_axes(v, out)
    return out


def test_mini_epoch_axes_step_by_whole_numbers():
    """Issue 17.4: Inspector, Compare and the other charts over training label mini-epochs 0, 1, 2, never 0.5."""
    from core.render import compare_charts as CC
    from core.render import inspector_views as IV

    runs = pd.DataFrame({"run": ["a", "a", "b", "b"], "mini_epoch": [1, 2, 1, 2], "std": [1.0, 0.5, 1.0, 0.9],
                         "loss": [2.0, 1.5, 2.1, 1.9], "block": ["s1"] * 4, "frac_low": [0.1] * 4,
                         "frac_high": [0.2] * 4})
    traj = pd.DataFrame({"probe": [0, 0, 1, 1], "mini_epoch": [1, 2, 1, 2], "rank": [1, 2, 2, 1],
                         "value": [1.0, 0.5, 0.7, 0.9]})
    charts = [C.training_curves(history()), C.loss_panel(history()), C.gate_fractions(gates_table()),
              C.activation_dynamics(layers_table().assign(image="#0")),
              CC.overlay_chart(runs, "std", ["a", "b"]), CC.loss_overlay(runs, ["a", "b"]),
              CC.gate_saturation_chart(runs, ["a", "b"]), IV.rank_chart(traj, [0], current=2)]
    for c in charts:
        axes = _x_axes(c.to_dict())
        assert axes, c.to_dict().get("title")
        for x in axes:
            assert x["axis"].get("tickMinStep") == 1 and x["axis"].get("format") == "d", x


def test_labels_draw_the_middle_dot_not_a_question_mark():
    """Issue 17.4: "#0 · me 0" on the Inspector's filters was drawn "#0 ? me 0" (glyphs were ASCII only)."""
    from core.render import grids

    dot, q = grids.text_mask("·", 11), grids.text_mask("?", 11)
    assert dot.shape != q.shape or (dot != q).any()
    assert dot.max() > 0


def _encodings(spec, channel: str, out=None) -> list[dict]:
    out = [] if out is None else out
    if isinstance(spec, dict):
        enc = spec.get("encoding")
        if isinstance(enc, dict) and isinstance(enc.get(channel), dict):
            out.append(enc[channel])
        for v in spec.values():
            _encodings(v, channel, out)
    elif isinstance(spec, list):
        for v in spec:
            _encodings(v, channel, out)
    return out


def test_several_images_have_a_legend_of_dash_styles_and_the_image_in_the_tooltip():
    """Issue 17.3: the "image" legend showed identical black dots (the lines' points), not the dash styles."""
    lt = layers_table()
    df = pd.concat([lt[lt["probe"] == p].assign(image=f"#{p}") for p in (0, 1)])
    spec = C.activation_dynamics(df, history=history()).to_dict()
    dashes = [e for e in _encodings(spec, "strokeDash") if e.get("field") == "image"]
    assert dashes and all(e["legend"]["symbolType"] == "stroke" and e["legend"]["symbolStrokeColor"] for e in dashes)
    assert all(len(e["scale"]["range"]) == 2 and e["scale"]["range"][0] != e["scale"]["range"][1] for e in dashes)
    for tips in _encodings(spec, "tooltip"):
        if any(t.get("field") == "stat" for t in tips):
            assert any(t.get("field") == "image" for t in tips)
    # the loss panel below: line swatches in the series' colours
    loss = [e for e in _encodings(spec, "color") if e.get("field") == "series"]
    assert loss and loss[0]["legend"]["symbolType"] == "stroke" and "symbolStrokeColor" not in loss[0]["legend"]


def test_log_axes_keep_zeros():
    """Issue 17.7: a log axis dropped zeros, so a dead squeeze path vanished until it came back to life."""
    d = pd.DataFrame({"block": ["s1"] * 3 + ["s2"] * 3, "mini_epoch": [0, 1, 2] * 2,
                      "v": [0.0, 0.0, 0.3, 1e-3, 1e-2, 1e-1]})
    spec = C.lines_by(d, "v", "block", log=True).to_dict()
    assert sorted(r["v"] for r in next(iter(spec["datasets"].values()))) == sorted(d["v"])
    y = _encodings(spec, "y")[0]
    assert y["scale"]["type"] == "symlog" and y["scale"]["constant"] == pytest.approx(1e-3)
    assert C.log_scale(d["v"][d["v"] > 0]).to_dict() == {"type": "log"}


def test_gate_fractions_tells_identical_lines_apart():
    # Five SE blocks with the same "≈0.5" fraction at every checkpoint draw one visible line: each block
    # gets its own dash and marker, and the panel's subtitle names the blocks that coincide.
    rows = [{"mini_epoch": me, "probe": 0, "block": f"block{b}_se", "mean": 0.5, "std": 0.0, "frac_low": 0.0,
             "frac_high": 0.0, "frac_half": 1.0 if b <= 5 else 0.2 * me} for me in (0, 1, 2) for b in range(1, 7)]
    spec = C.gate_fractions(pd.DataFrame(rows)).to_dict()
    half = spec["hconcat"][2]
    assert half["encoding"]["strokeDash"]["field"] == "block"
    assert half["encoding"]["shape"]["field"] == "block"
    assert half["title"]["subtitle"] == ["same line: " + ", ".join(f"block{b}_se" for b in range(1, 6))]
    assert C.coinciding_series(pd.DataFrame({"k": ["a", "b"], "x": [0, 0], "y": [1.0, 2.0]}), "k", "x", "y") == []


def test_many_layer_charts_can_show_the_top_n_with_a_legend():
    # Weights: ~40 layers are a tangle without a legend; the top N by last value fit one.
    d = pd.DataFrame([{"layer": f"conv{i:02d}", "mini_epoch": me, "norm": float(i * (me + 1))}
                      for i in range(40) for me in (0, 1, 2)])
    assert C.lines_by(d, "norm", "layer").to_dict()["layer"][0]["encoding"]["color"]["legend"] is None
    top = C.top_series(d, "layer", "norm", 5)
    assert sorted(top["layer"].unique()) == [f"conv{i}" for i in range(35, 40)]
    spec = C.lines_by(top, "norm", "layer", legend_orient="bottom", height=200).to_dict()
    enc = spec["layer"][0]["encoding"]
    assert enc["color"]["legend"]["orient"] == "bottom"  # a narrow column clips a right-hand legend
    assert enc["y"]["axis"]["titleLimit"] == 200  # a long axis title stays inside the chart
    assert C.top_series(d, "layer", "norm", 100) is d


def test_compare_gate_chart_legends_sit_above_the_panels_uncut():
    from core.render import compare_charts as CC

    g = pd.DataFrame([{"run": r, "block": b, "mini_epoch": me, "frac_low": 0.1, "frac_high": 0.2}
                      for r in ("a-run-with-a-rather-long-name-for-a-legend", "b") for b in ("b1", "b2", "b3", "b4")
                      for me in (0, 1)])
    enc = CC.gate_saturation_chart(g, sorted(g["run"].unique())).to_dict()["spec"]["encoding"]
    for channel in ("color", "strokeDash"):
        assert enc[channel]["legend"]["orient"] == "top"  # not right of a page-wide facet, where it clips
        assert enc[channel]["legend"]["labelLimit"] == 0
