"""TensorBoard export: scalars and pre-binned gate histograms written without the tensorboard package."""
from __future__ import annotations

import types

import keras
import numpy as np
import pandas as pd
import pytest

from core.training.recorder import RunRecorder
from core.training.tensorboard import export_tensorboard, histogram_points, read_events, scalar_points


def _tables() -> dict[str, pd.DataFrame]:
    layers = pd.DataFrame([
        {"run": "r", "mini_epoch": me, "probe": 0, "layer": layer, "min": 0.0, "max": 1.0, "mean": 0.1,
         "std": std, "mean_abs": std / 2, "frac_zero": 0.0, "frac_dead_channels": dead, "n_nan": 0, "n_inf": 0}
        for me, layer, std, dead in [(0, "block1_act1", 1.0, 0.0), (1, "block1_act1", 0.5, 0.25),
                                     (0, "dense1", 2.0, 0.0), (1, "dense1", np.nan, 0.5)]
    ] + [{"run": "other", "mini_epoch": 0, "probe": 0, "layer": "block1_act1", "std": 99.0, "mean_abs": 9.0,
          "frac_dead_channels": 0.0}])
    gates = pd.DataFrame([{"run": "r", "mini_epoch": me, "probe": 0, "block": "block1", "frac_low": 0.1 * me,
                           "frac_high": 0.0, "frac_half": 0.2, "mean": 0.5, "std": 0.1} for me in (0, 1)])
    edges = np.linspace(0, 1, 5)
    gate_hist = pd.DataFrame([
        {"run": "r", "mini_epoch": me, "block": "block1", "kind": kind, "bin_left": a, "bin_right": b,
         "count": c + me}
        for me in (0, 1) for kind in ("gate", "logits")
        for a, b, c in zip(edges[:-1], edges[1:], (3, 0, 5, 1))])
    weights = pd.DataFrame([{"run": "r", "mini_epoch": me, "layer": "dense1", "variable": "kernel",
                             "norm": 1.0 + me, "dist_from_init": 0.1 * me,
                             "update_ratio": np.nan if me == 0 else 1e-3} for me in (0, 1)])
    return {"layers": layers, "gates": gates, "gate_hist": gate_hist, "weights": weights}


def _fake_run(name: str):
    """Only the name of a run is used when the tables carry every statistic."""
    return types.SimpleNamespace(name=name)


def test_points_are_pure_and_skip_missing_values():
    pts = {(t, s): v for t, s, v in scalar_points(_tables(), "r")}
    assert pts[("activation_std/block1_act1", 1)] == 0.5
    assert ("activation_std/dense1", 1) not in pts  # NaN skipped
    assert pts[("activation_frac_dead_channels/dense1", 1)] == 0.5
    assert pts[("gate_frac_low/block1", 1)] == pytest.approx(0.1)
    assert pts[("weight_norm/dense1/kernel", 1)] == 2.0 and ("weight_update_ratio/dense1/kernel", 0) not in pts
    assert pts[("activation_std/block1_act1", 0)] == 1.0  # the other run's row is not taken
    hists = list(histogram_points(_tables(), "r"))
    assert [(t, s) for t, s, *_ in hists] == [("gate_hist/block1", 0), ("gate_logits_hist/block1", 0),
                                             ("gate_hist/block1", 1), ("gate_logits_hist/block1", 1)]
    assert hists[2][4].tolist() == [4, 1, 6, 2]


def test_export_round_trip(tmp_path):
    summary = export_tensorboard(_fake_run("r"), _tables(), tmp_path / "tb")
    ev = read_events(tmp_path / "tb")
    assert summary.scalars == len(ev[ev.plugin == "scalars"]) and summary.histograms == 4
    s = ev[ev.plugin == "scalars"].set_index(["tag", "step"])["value"]
    assert s[("activation_std/block1_act1", 1)] == pytest.approx(0.5)
    assert s[("activation_mean_abs/dense1", 0)] == pytest.approx(1.0)
    assert s[("weight_norm/dense1/kernel", 1)] == pytest.approx(2.0)
    h = ev[(ev.plugin == "histograms") & (ev.tag == "gate_hist/block1") & (ev.step == 1)]["value"].iloc[0]
    assert h.shape == (4, 3) and h.dtype == np.float64
    np.testing.assert_allclose(h[:, 0], [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(h[:, 2], [4, 1, 6, 2])


def test_recorder_writes_weight_norms_each_mini_epoch(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, name="c"), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax", name="d")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x, y = rng.random((48, 8, 8, 1)).astype("float32"), rng.integers(0, 2, 48)
    rec = RunRecorder(tmp_path / "run", 16, 8, tensorboard_dir=tmp_path / "tb")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[rec])
    ev = read_events(tmp_path / "tb")
    norms = ev[ev.tag == "weight_norm/d/kernel"].sort_values("step")
    assert norms["step"].tolist() == [1, 2, 3]
    assert norms["value"].iloc[-1] == pytest.approx(float(np.linalg.norm(model.get_layer("d").kernel.numpy())),
                                                    rel=1e-5)
    assert set(ev[ev.step == 3].tag) >= {"train/loss", "train/accuracy", "train/lr", "weight_norm/c/kernel",
                                         "weight_norm/c/bias"}


def test_export_reads_weight_norms_from_checkpoints_without_a_weights_table(tmp_path):
    from core.run.runs import Run

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(), keras.layers.Dense(2, name="d")])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(np.ones((16, 4, 4, 1), "float32"), np.zeros(16, "int64"), batch_size=8, verbose=0,
              callbacks=[RunRecorder(tmp_path / "run", 8, 8)])
    run = Run(tmp_path / "run")
    export_tensorboard(run, {}, tmp_path / "tb")
    ev = read_events(tmp_path / "tb")
    assert ev[ev.tag == "weight_norm/d/kernel"]["step"].tolist() == [0, 1, 2]
