"""core.analysis.inspector: channel rankings, first-layer filters and probe predictions (exact answers on hand-made data)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from core.analysis import inspector as I
from core.render import inspector_views as IV


def _channels(values: dict[int, list[float]], layer: str = "conv1", channel: int = 2) -> pd.DataFrame:
    """values[mini_epoch][probe] = channel mean of ``layer``/``channel``; plus a distractor channel and layer."""
    rows = []
    for me, vals in values.items():
        for p, v in enumerate(vals):
            rows.append({"mini_epoch": me, "probe": p, "layer": layer, "channel": channel, "mean": v, "max": 2 * v})
            rows.append({"mini_epoch": me, "probe": p, "layer": layer, "channel": channel + 1, "mean": 100.0 - p,
                         "max": 0.0})
            rows.append({"mini_epoch": me, "probe": p, "layer": "other", "channel": channel, "mean": -5.0,
                         "max": 0.0})
    df = pd.DataFrame(rows)
    df["layer"] = df["layer"].astype("category")
    return df


def test_channel_ranking_orders_probes_by_channel_mean():
    ch = _channels({1: [0.5, 2.0, -1.0, 2.0, float("nan")]})
    r = I.channel_ranking(ch, "conv1", 2, 1)
    assert r["probe"].tolist() == [1, 3, 0, 2, 4]  # tie 1/3 by index, NaN last
    assert r["rank"].tolist() == [1, 2, 3, 4, 5]
    assert r["value"].tolist()[:4] == [2.0, 2.0, 0.5, -1.0]
    assert I.channel_ranking(ch, "conv1", 2, 7).empty
    assert I.channel_ranking(ch, "conv1", 2, 1, by="max")["probe"].tolist()[0] == 1
    with pytest.raises(ValueError):
        I.channel_ranking(ch, "conv1", 2, 1, by="median")


def test_rank_trajectories_and_stability():
    ch = _channels({0: [3.0, 2.0, 1.0, 0.0], 1: [0.0, 1.0, 2.0, 3.0], 2: [3.0, 0.0, 2.0, 1.0]})
    t = I.rank_trajectories(ch, "conv1", 2)
    ranks = t.pivot(index="probe", columns="mini_epoch", values="rank")
    assert ranks[0].tolist() == [1, 2, 3, 4]
    assert ranks[1].tolist() == [4, 3, 2, 1]
    assert ranks[2].tolist() == [1, 4, 2, 3]
    s = I.rank_stability(t, k=2, reference=2)  # top 2 at mini-epoch 2: probes 0 and 2
    assert s["overlap"].tolist() == [1, 1, 2] and s["fraction"].tolist() == [0.5, 0.5, 1.0]
    chart = IV.rank_chart(t, [0, 2], {0: "#0 · a"}, current=2).to_dict()
    assert "layer" in chart


def test_first_conv_kernel_prefers_depth_order():
    w = {"dense/kernel": np.zeros((4, 2)), "conv_a/kernel": np.zeros((3, 3, 8, 16)),
         "late/kernel": np.zeros((5, 5, 3, 2)), "stem/kernel": np.ones((3, 3, 3, 4))}
    name, k = I.first_conv_kernel(w, ("stem", "conv_a", "late"))
    assert name == "stem/kernel" and k.shape == (3, 3, 3, 4)
    assert I.first_conv_kernel(w)[0] == "late/kernel"  # without an order: the weights' own order
    assert I.first_conv_kernel({"dense/kernel": np.zeros((4, 2))}) is None


def test_filter_rgb_normalises_each_filter():
    k = np.zeros((1, 2, 3, 2))
    k[0, 0, :, 0] = [0.0, 1.0, 2.0]
    k[0, 1, :, 0] = [4.0, 4.0, 4.0]  # filter 0 spans 0..4
    k[..., 1] = 7.0  # filter 1 is constant -> mid grey
    x = I.filter_rgb(k)
    assert x.shape == (2, 1, 2, 3)
    np.testing.assert_allclose(x[0, 0, 0], [0.0, 0.25, 0.5])
    np.testing.assert_allclose(x[0, 0, 1], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(x[1], 0.5)
    grey = I.filter_rgb(np.arange(4.0).reshape(2, 2, 1, 1))
    assert grey.shape == (1, 2, 2, 3) and (grey[..., 0] == grey[..., 2]).all() and grey.max() == 1.0
    with pytest.raises(ValueError):
        I.filter_rgb(np.zeros((3, 3, 2, 4)))


def test_filter_scale_over_time_shows_growth():
    k0 = np.zeros((1, 1, 3, 1))
    k0[0, 0, :, 0] = [0.0, 1.0, 2.0]
    lo, hi = I.filter_ranges([k0, 2 * k0])
    assert lo.tolist() == [0.0] and hi.tolist() == [4.0]
    np.testing.assert_allclose(I.filter_rgb(k0, lo, hi)[0, 0, 0], [0.0, 0.25, 0.5])
    np.testing.assert_allclose(I.filter_rgb(2 * k0, lo, hi)[0, 0, 0], [0.0, 0.5, 1.0])
    ev = IV.filter_evolution([(0, k0), (5, 2 * k0)], [0], tile_px=8, scale="over_time")
    same = IV.filter_evolution([(0, k0), (5, 2 * k0)], [0], tile_px=8, scale="filter")
    assert ev.dtype == np.uint8 and ev.shape == same.shape and not np.array_equal(ev, same)


def test_filter_grid_and_nan():
    k = np.random.default_rng(0).normal(size=(3, 3, 3, 5))
    k[0, 0, 0, 4] = np.nan
    g = IV.filter_grid(k, tile_px=12, cols=5)
    assert g.dtype == np.uint8 and g.ndim == 3 and g.shape[2] == 3
    rgb = IV.to_uint8(I.filter_rgb(k))
    assert tuple(rgb[4, 0, 0]) == (255, 0, 255)  # NaN weight drawn magenta


def test_probabilities_and_prediction_table():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.25, 0.25], [np.nan, 0.5, 0.5]])
    np.testing.assert_allclose(I.to_probabilities(p[:3]), p[:3])
    logits = np.log(p[:3])
    np.testing.assert_allclose(I.to_probabilities(logits), p[:3])
    np.testing.assert_allclose(I.to_probabilities(np.array([[0.25]])), [[0.75, 0.25]])  # a sigmoid unit
    s = 1.0 / (1.0 + math.exp(2.0))
    np.testing.assert_allclose(I.to_probabilities(np.array([[-2.0]])), [[1.0 - s, s]])  # its logit
    t = I.prediction_table(p, np.array([0, 0, -1, 1]), ["cat", "dog", "fox"])
    assert t["pred"].tolist() == [0, 2, 0, -1]
    assert t["pred_name"].tolist() == ["cat", "fox", "cat", "?"]
    assert t["label_name"].tolist() == ["cat", "cat", "?", "dog"]
    assert t["p_true"].tolist()[:2] == [0.7, 0.1] and math.isnan(t["p_true"][2])
    assert t["loss"][0] == pytest.approx(-math.log(0.7)) and t["loss"][1] == pytest.approx(-math.log(0.1))
    assert math.isnan(t["loss"][2]) and t["loss"][3] == math.inf
    assert t["correct"].tolist() == [True, False, False, False]
    w = I.most_wrong(t, 2)
    assert w["probe"].tolist() == [3, 1]  # NaN output first, unlabelled probe 2 left out
    assert I.accuracy_of(t) == pytest.approx(1 / 3)


def test_probe_tiles_upscale():
    x = np.zeros((2, 24, 24, 1), np.uint8)
    t = IV.probe_tiles(x, px=96)
    assert t.shape == (2, 96, 96, 3)


def test_predictions_match_the_sweep(tmp_path_factory, runs_root):
    """One forward pass on the probe set gives the sweep's inference-mode loss and accuracy."""
    from core.engine.engine import RunEngine, run_probe_set
    from core.run.runs import Run
    from core.analysis.sweep import sweep
    from tests.core.analysis.test_compare import compare_root

    tiny_run = Run(compare_root(tmp_path_factory, runs_root) / "tiny")  # shares its sweep cache with other tests

    res = sweep(tiny_run)
    eng = RunEngine(tiny_run)
    probes = run_probe_set(tiny_run)
    ck = tiny_run.checkpoints()[-1]
    p = I.predict_probes(eng, ck, probes.images)
    assert p.shape == (len(probes), len(tiny_run.manifest.class_names))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    t = I.prediction_table(p, probes.labels)
    ex = res.extras.set_index("mini_epoch").loc[ck.mini_epoch]
    assert I.accuracy_of(t) == pytest.approx(ex["accuracy"])
    assert t["loss"].mean() == pytest.approx(ex["loss"], rel=1e-4)
    assert I.output_tap(eng) == res.layer_order[-1]
    name, kernels = I.first_conv_kernel(tiny_run.read_weights(0), res.layer_order)
    assert name == "stem_conv/kernel"
    over = I.read_kernel(tiny_run, tiny_run.checkpoints(), name)
    assert [me for me, _ in over] == [c.mini_epoch for c in tiny_run.checkpoints()]
    np.testing.assert_array_equal(over[0][1], kernels)
