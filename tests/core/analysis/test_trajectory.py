"""One layer across checkpoints: percentile bands, filmstrips, SE excitation scale, against brute-force numpy/Keras."""
from __future__ import annotations

import numpy as np
import pytest

from core.analysis.sweep import sweep
from core.analysis.trajectory import (
    BAND_COLUMNS, PERCENTILES, distribution_frame, filmstrip, near_one_weight_of, percentile_bands, se_scale,
    topk_share,
)
from core.engine.engine import RunEngine
from core.render.trajectory import filmstrip_image
from tests.fixtures import copy_run, plant_dead_channels

K = 2


@pytest.fixture(scope="module")
def engine(tiny_run):
    return RunEngine(tiny_run)


def test_percentile_bands_are_numpy_percentiles_and_skip_non_finite():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 5, 4, 6)).astype(np.float32)
    a[1, 0, 0, 0] = np.nan
    a[2] = np.inf
    got = percentile_bands(a)
    for i in range(2):
        row = a[i].astype(np.float64).ravel()
        assert np.allclose(got[i], np.percentile(row[np.isfinite(row)], PERCENTILES), rtol=0, atol=0)
    assert np.isnan(got[2]).all()


def test_distribution_bands_equal_numpy_percentiles_of_the_same_activations(tiny_run, engine):
    x, _ = tiny_run.probes()
    images, ckpts = x[:3], tiny_run.checkpoints()
    df = distribution_frame(engine, ckpts, images, "block2_act1", probe_ids=["a", "b", "c"])
    assert len(df) == 3 * len(ckpts) and list(df["probe"][:3]) == ["a", "b", "c"]
    for c in ckpts:
        acts = engine.activations(c, images)["block2_act1"].astype(np.float64)
        got = df[df["mini_epoch"] == c.mini_epoch][list(BAND_COLUMNS)].to_numpy()
        want = np.stack([np.percentile(a.ravel(), PERCENTILES) for a in acts])
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_filmstrip_of_a_planted_dead_channel_turns_constant_from_its_onset(tiny_run, tmp_path):
    run = copy_run(tiny_run.path, tmp_path / "dead")
    plant_dead_channels(run, K, "block2_conv1", [3], bn="block2_bn1")
    x, _ = run.probes()
    fs = filmstrip(RunEngine(run), run.checkpoints(), x[0], "block2_act1", channel=3)
    assert fs.mini_epochs == tuple(c.mini_epoch for c in run.checkpoints()) and fs.maps.ndim == 3
    spread = fs.maps.max(axis=(1, 2)) - fs.maps.min(axis=(1, 2))
    assert all(spread[:K] > 0) and all(spread[K:] == 0) and np.all(fs.maps[K:] == 0)
    assert fs.lo == float(fs.maps.min()) and fs.hi == float(fs.maps.max())
    # one row of tiles on one colour scale: the dead tiles are all the lowest colour
    img = filmstrip_image(fs.maps, fs.lo, fs.hi, tile=fs.maps.shape[1])
    w = fs.maps.shape[2]
    dead_tile = img[: fs.maps.shape[1], (w + 4) * K:(w + 4) * K + w]
    assert (dead_tile == dead_tile[0, 0]).all()
    mean = filmstrip(RunEngine(run), run.checkpoints(), x[0], "block2_act1")  # the layer's mean map
    assert mean.channel is None and mean.maps.shape == fs.maps.shape


def test_se_excitation_scale_equals_a_brute_force_computation_from_sub_models(tiny_run, engine):
    import keras

    res = sweep(tiny_run, engine=engine)
    blocks = engine.se_blocks
    df = se_scale(res, blocks, k=2, near_one_weight=0.5)
    model = engine.model
    x, _ = tiny_run.probes()
    inp = engine.preprocess(x)
    sub = {b.name: keras.Model(model.input, [model.get_layer(b.spatial).output, model.get_layer(b.excite).output,
                                              model.get_layer(b.gate).output]) for b in blocks}
    for c in tiny_run.checkpoints():
        w = engine.read_weights(c)
        for v in model.variables:
            v.assign(w[v.path])
        probe_loss = float(res.extras.set_index("mini_epoch").loc[c.mini_epoch, "loss"])
        reg = 0.0
        for b in blocks:
            s, e, g = (np.asarray(t, np.float64) for t in sub[b.name](inp, training=False))
            row = df[(df["block"] == b.name) & (df["mini_epoch"] == c.mini_epoch)].iloc[0]
            assert row["input_mean_abs"] == pytest.approx(np.median(np.abs(s).mean(axis=(1, 2, 3))), rel=1e-4)
            assert row["input_max"] == pytest.approx(np.median(s.max(axis=(1, 2, 3))), rel=1e-4)
            assert row["output_mean_abs"] == pytest.approx(np.median(np.abs(e).mean(axis=(1, 2, 3))), rel=1e-4)
            assert row["gate_mean"] == pytest.approx(np.median(g.reshape(len(g), -1).mean(axis=1)), rel=1e-4)
            ch = np.sort(np.abs(e).mean(axis=(1, 2)), axis=1)[:, ::-1]
            assert row["topk_share"] == pytest.approx(np.median(ch[:, :2].sum(axis=1) / ch.sum(axis=1)), rel=1e-4)
            reg += 0.5 * np.mean((1.0 - g) ** 2)
        rows = df[df["mini_epoch"] == c.mini_epoch]
        assert rows["near_one_loss"].iloc[0] == pytest.approx(reg, rel=1e-4)
        assert rows["near_one_share"].iloc[0] == pytest.approx(reg / (probe_loss + reg), rel=1e-4)
    assert near_one_weight_of(tiny_run.manifest) == 0.0
    assert np.isnan(se_scale(res, blocks)["near_one_loss"]).all()
    assert topk_share(res.channels.iloc[:0], "x", 2).empty
