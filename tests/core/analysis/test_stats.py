"""Exact-answer tests for core.analysis.stats on small hand-computed arrays."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from core.analysis import stats as S
from tests.core.analysis import stats_reference as R

pytestmark = pytest.mark.filterwarnings("error")  # all-NaN inputs must not warn


def known() -> np.ndarray:
    """(2, 2, 2, 3) float32; per (probe, channel) the 4 positions in (h, w) row-major order."""
    vals = {
        (0, 0): [1, 2, 3, 4],
        (0, 1): [0, 0, 0, 0],
        (0, 2): [-1, 1, -3, 3],
        (1, 0): [0, 0, 2, -2],
        (1, 1): [5, 5, 5, 5],
        (1, 2): [0.5, 0, 0, 0],
    }
    a = np.empty((2, 2, 2, 3), dtype=np.float32)
    for (n, c), v in vals.items():
        a[n, :, :, c] = np.array(v, dtype=np.float32).reshape(2, 2)
    return a


def test_channel_stats_known_values_exact():
    st = R.channel_stats(known())
    assert set(st) == set(S.STAT_NAMES)
    assert all(v.shape == (2, 3) for v in st.values())
    assert_array_equal(st["min"], [[1, 0, -3], [-2, 5, 0]])
    assert_array_equal(st["max"], [[4, 0, 3], [2, 5, 0.5]])
    assert_array_equal(st["mean"], [[2.5, 0, 0], [0, 5, 0.125]])
    assert_array_equal(st["std"], np.sqrt([[1.25, 0, 5], [2, 0, 0.046875]]))
    assert_array_equal(st["mean_abs"], [[2.5, 0, 2], [1, 5, 0.125]])
    assert_array_equal(st["frac_zero"], [[0, 1, 0], [0.5, 0, 0.75]])
    assert_array_equal(st["n_nan"], np.zeros((2, 3)))
    assert_array_equal(st["n_inf"], np.zeros((2, 3)))
    assert st["std"].dtype == np.float64 and st["n_nan"].dtype == np.int64


def test_channel_stats_match_numpy_on_random_data():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 7, 6, 4)).astype(np.float32)
    a[a < -0.5] = 0  # mixed signs and zeros: exercises the abs and zero-count passes
    st = R.channel_stats(a)
    x = a.reshape(5, -1, 4).astype(np.float64)
    assert_allclose(st["mean"], x.mean(1), rtol=1e-12, atol=1e-15)
    assert_allclose(st["std"], x.std(1), rtol=1e-12)
    assert_allclose(st["mean_abs"], np.abs(x).mean(1), rtol=1e-12)
    assert_array_equal(st["frac_zero"], (x == 0).mean(1))
    assert_array_equal(st["min"], x.min(1))
    assert_array_equal(st["max"], x.max(1))


@pytest.mark.parametrize("shape", [(3, 4), (3, 1, 1, 4), (3, 5, 4), (3, 2, 5, 4)])
def test_channel_stats_shapes(shape):
    a = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    st = R.channel_stats(a)
    assert all(v.shape == (3, 4) for v in st.values())
    # (N, C) and (N, 1, 1, C) are the same data: one position per channel.
    if np.prod(shape[1:-1]) == 1:
        assert_array_equal(st["mean"], a.reshape(3, 4))
        assert_array_equal(st["std"], 0)


def test_channel_stats_rejects_1d():
    with pytest.raises(ValueError):
        R.channel_stats(np.zeros(5))


def test_channel_stats_integer_input():
    st = R.channel_stats(np.array([[1, -128], [0, 2]], dtype=np.int8))
    assert_array_equal(st["mean_abs"], [[1, 128], [0, 2]])  # no int8 overflow in abs


def test_float64_accumulation_keeps_precision():
    rng = np.random.default_rng(1)
    # Large mean, small spread: float32 accumulation or E[x^2]-E[x]^2 would lose the std.
    a = (1e4 + rng.standard_normal((2, 64, 64, 3))).astype(np.float32)
    st = R.channel_stats(a)
    x = a.reshape(2, -1, 3).astype(np.float64)
    assert_allclose(st["mean"], x.mean(1), rtol=1e-14)
    assert_allclose(st["std"], x.std(1), rtol=1e-9)
    # A constant channel has std exactly 0, not rounding noise.
    c = np.full((1, 50, 50, 1), 3.7, dtype=np.float32)
    assert R.channel_stats(c)["std"][0, 0] == 0.0


def test_nan_inf_are_counted_and_excluded():
    a = known()
    a[0, 0, 0, 0] = np.nan  # channel 0 of probe 0: was [1,2,3,4] -> [nan,2,3,4]
    a[0, 1, 1, 0] = np.inf  # -> [nan,2,3,inf]
    a[1, 0, 0, 1] = -np.inf  # channel 1 of probe 1: [-inf,5,5,5]
    st = R.channel_stats(a)
    assert_array_equal(st["n_nan"], [[1, 0, 0], [0, 0, 0]])
    assert_array_equal(st["n_inf"], [[1, 0, 0], [0, 1, 0]])
    assert st["min"][0, 0] == 2 and st["max"][0, 0] == 3
    assert st["mean"][0, 0] == 2.5 and st["std"][0, 0] == 0.5 and st["mean_abs"][0, 0] == 2.5
    assert st["min"][1, 1] == 5 and st["mean"][1, 1] == 5 and st["std"][1, 1] == 0
    # frac_zero is over all positions, NaN/Inf included (they are not zeros).
    assert st["frac_zero"][0, 0] == 0 and st["frac_zero"][1, 0] == 0.5
    # Untouched channels are as in the clean array.
    clean = R.channel_stats(known())
    for k in S.STAT_NAMES:
        assert_array_equal(st[k][:, 2], clean[k][:, 2])


def test_all_nan_channel_gives_nan_without_warning():
    a = np.zeros((2, 3, 2), dtype=np.float32)
    a[:, :, 1] = np.nan
    st = R.channel_stats(a)
    for k in ("min", "max", "mean", "std", "mean_abs"):
        assert np.isnan(st[k][:, 1]).all()
        assert_array_equal(st[k][:, 0], 0)
    assert_array_equal(st["n_nan"][:, 1], 3)
    ls = R.layer_stats(a)
    assert_array_equal(ls["min"], 0) and assert_array_equal(ls["std"], 0)
    assert_array_equal(ls["n_nan"], 3)
    # All values NaN: layer stats NaN, still no warning.
    ls = R.layer_stats(np.full((1, 4, 2), np.nan))
    assert np.isnan(ls["mean"]).all() and np.isnan(ls["min"]).all()


def test_chunking_and_paths_agree():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((6, 5, 5, 3)).astype(np.float32)
    b = a.copy()
    b[2, 1, 1, 0] = np.nan  # forces the masked path for the chunk holding probe 2
    whole = S.moments(a, chunk_elements=1 << 30)
    per_probe = S.moments(a, chunk_elements=5 * 5 * 3)
    # 7 elements, 3 channels: blocks of 2 positions (25 = 12*2 + 1), merged across blocks.
    split = S.moments(a, chunk_elements=7)
    for other in (per_probe, split):
        assert other.total == whole.total == 25
        for f in ("count", "n_zero", "n_nan", "n_inf", "min", "max"):
            assert_array_equal(getattr(whole, f), getattr(other, f))
        for f in ("s", "m2", "abs_sum"):
            assert_allclose(getattr(whole, f), getattr(other, f), rtol=1e-12)
    masked = S.moments(b, chunk_elements=1 << 30)  # every probe through the masked path
    masked_split = S.moments(b, chunk_elements=7)  # only one block through it
    keep = np.arange(6) != 2
    for f in ("s", "m2", "abs_sum", "min", "max"):
        assert_allclose(getattr(masked, f)[keep], getattr(whole, f)[keep], rtol=1e-12)
        assert_allclose(getattr(masked_split, f), getattr(masked, f), rtol=1e-12)
    assert masked_split.n_nan[2, 0] == 1 and masked_split.count[2, 0] == 24


def test_merge_moments_precision_across_blocks():
    rng = np.random.default_rng(4)
    a = (1e4 + rng.standard_normal((1, 4096, 2))).astype(np.float32)
    st = S.channel_stats_from_moments(S.moments(a, chunk_elements=64))  # 32-position blocks
    assert_allclose(st["std"], a.astype(np.float64).std(1), rtol=1e-9)


def test_empty_inputs():
    st = R.channel_stats(np.zeros((0, 4, 4, 3), dtype=np.float32))
    assert st["mean"].shape == (0, 3)
    st = R.channel_stats(np.zeros((2, 0, 3), dtype=np.float32))  # no positions
    assert np.isnan(st["mean"]).all() and np.isnan(st["frac_zero"]).all()


def test_layer_stats_known_values():
    a = known()
    ls = R.layer_stats(a)
    assert set(ls) == set(S.LAYER_STAT_NAMES)
    flat = a.reshape(2, -1).astype(np.float64)
    assert_array_equal(ls["min"], [-3, -2])
    assert_array_equal(ls["max"], [4, 5])
    assert_allclose(ls["mean"], flat.mean(1), rtol=1e-15)
    assert_allclose(ls["std"], flat.std(1), rtol=1e-12)
    # The layer std is the pooled std, not the mean of channel stds.
    assert not np.allclose(ls["std"], R.channel_stats(a)["std"].mean(1))
    assert_allclose(ls["mean_abs"], np.abs(flat).mean(1), rtol=1e-15)
    assert_array_equal(ls["frac_zero"], [4 / 12, 5 / 12])
    # Probe 0: channel 1 is all zero; probe 1: none (channel 2 max 0.5).
    assert_array_equal(ls["frac_dead_channels"], [1 / 3, 0])
    assert_array_equal(ls["n_nan"], [0, 0])


def test_layer_stats_dead_eps():
    a = known()
    assert_array_equal(R.layer_stats(a, dead_eps=0.5)["frac_dead_channels"], [1 / 3, 1 / 3])


def test_channel_stats_frame_shape_dtypes_and_order():
    st = R.channel_stats(known())
    df = R.channel_stats_frame(st, run="r1", mini_epoch=7, layer="conv1", probe_ids=[10, 11])
    assert list(df.columns) == ["run", "mini_epoch", "probe", "layer", "channel", "min", "max", "mean",
                                "std", "mean_abs", "frac_zero", "n_nan", "n_inf"]
    assert len(df) == 2 * 3
    assert isinstance(df["run"].dtype, pd.CategoricalDtype)
    assert isinstance(df["layer"].dtype, pd.CategoricalDtype)
    for c in ("mini_epoch", "probe", "channel", "n_nan", "n_inf"):
        assert df[c].dtype == np.int32, c
    for c in ("min", "max", "mean", "std", "mean_abs", "frac_zero"):
        assert df[c].dtype == np.float32, c
    assert df["probe"].tolist() == [10, 10, 10, 11, 11, 11]
    assert df["channel"].tolist() == [0, 1, 2, 0, 1, 2]
    assert (df["mini_epoch"] == 7).all() and (df["run"] == "r1").all()
    row = df[(df.probe == 11) & (df.channel == 2)].iloc[0]
    assert row["mean"] == np.float32(0.125) and row["frac_zero"] == np.float32(0.75)


def test_frames_default_probe_ids_and_bad_length():
    st = R.channel_stats(known())
    assert R.channel_stats_frame(st, run="r", mini_epoch=0, layer="l")["probe"].tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError):
        R.channel_stats_frame(st, run="r", mini_epoch=0, layer="l", probe_ids=[1, 2, 3])


def test_layer_stats_frame():
    df = R.layer_stats_frame(R.layer_stats(known()), run="r", mini_epoch=3, layer="conv", probe_ids=[4, 5])
    assert list(df.columns) == ["run", "mini_epoch", "probe", "layer", "min", "max", "mean", "std",
                                "mean_abs", "frac_zero", "frac_dead_channels", "n_nan", "n_inf"]
    assert len(df) == 2 and df["probe"].tolist() == [4, 5]
    assert df["frac_dead_channels"].dtype == np.float32 and df["n_inf"].dtype == np.int32
    assert isinstance(df["layer"].dtype, pd.CategoricalDtype)


def test_concat_frames_keeps_categoricals():
    st = R.channel_stats(known())
    a = R.channel_stats_frame(st, run="r", mini_epoch=0, layer="a")
    b = R.channel_stats_frame(st, run="r", mini_epoch=0, layer="b")
    df = R.concat_frames([a, b])
    assert isinstance(df["layer"].dtype, pd.CategoricalDtype)
    assert df["layer"].tolist() == ["a"] * 6 + ["b"] * 6
    assert len(R.concat_frames([])) == 0


# ---------------------------------------------------------------- gates


def test_gate_bins():
    assert S.GATE_BINS.shape == (21,)
    assert S.GATE_BINS[0] == 0 and S.GATE_BINS[-1] == 1
    assert_allclose(np.diff(S.GATE_BINS), 0.05)


def test_gate_fractions_at_boundaries():
    # 0.05 is not "low", 0.95 not "high" (strict); 0.48 and 0.52 are within 0.02 of 0.5.
    g = np.array([[0.0, 0.049, 0.05, 0.48, 0.5, 0.52, 0.53, 0.95, 0.951, 1.0]])
    st = S.gate_stats(g)
    assert st["frac_low"][0] == 2 / 10
    assert st["frac_high"][0] == 2 / 10
    assert st["frac_half"][0] == 3 / 10
    assert st["mean"][0] == pytest.approx(g.mean(), abs=1e-15)
    assert st["std"][0] == pytest.approx(g.std(), abs=1e-15)
    # float32 gates (what a model produces) classify the same way.
    st32 = S.gate_stats(g.astype(np.float32))
    for k in ("frac_low", "frac_high", "frac_half"):
        assert st32[k][0] == st[k][0], k


def test_gate_parameters():
    g = np.array([[0.1, 0.2, 0.45, 0.9]])
    st = S.gate_stats(g, low=0.15, high=0.85, tol=0.05)
    assert st["frac_low"][0] == 0.25 and st["frac_high"][0] == 0.25 and st["frac_half"][0] == 0.25


def test_gate_hist_counts_and_clipping():
    rng = np.random.default_rng(3)
    g = rng.uniform(0, 1, (4, 1, 1, 16))
    g[0, 0, 0, :4] = [0.0, 1.0, -0.1, 1.2]  # hard-sigmoid extremes and out-of-range values
    st = S.gate_stats(g)
    assert st["hist"].shape == (4, 20) and st["hist"].dtype == np.int64
    assert st["hist"].sum() == 4 * 16
    assert_array_equal(st["hist"].sum(1), 16)
    assert_array_equal(st["edges"], S.GATE_BINS)
    x = g[0].ravel()
    expected, _ = np.histogram(np.clip(x, 0, 1), bins=S.GATE_BINS)
    assert_array_equal(st["hist"][0], expected)
    assert st["hist"][0, 0] >= 2 and st["hist"][0, -1] >= 2


def test_gate_stats_nan():
    st = S.gate_stats(np.array([[0.0, np.nan, 1.0, 0.5], [np.nan] * 4]))
    assert st["frac_low"][0] == 1 / 3 and st["n_nan"].tolist() == [1, 4]
    assert np.isnan(st["mean"][1]) and np.isnan(st["frac_half"][1])
    assert st["hist"][0].sum() == 3 and st["hist"][1].sum() == 0


def test_gate_stats_frame():
    st = S.gate_stats(np.array([[0.0, 1.0], [0.5, 0.5]]))
    df = R.gate_stats_frame(st, run="r", mini_epoch=2, block="se1", probe_ids=[0, 9])
    assert list(df.columns) == ["run", "mini_epoch", "probe", "block", "frac_low", "frac_high",
                                "frac_half", "mean", "std"]
    assert df["probe"].tolist() == [0, 9] and df["mini_epoch"].dtype == np.int32
    assert df["frac_half"].tolist() == [0.0, 1.0] and df["std"].dtype == np.float32
    assert isinstance(df["block"].dtype, pd.CategoricalDtype)


def test_gate_hist_frame_sums_over_probes():
    g = np.array([[0.0, 0.01, 1.0], [0.99, 0.5, 0.51]])
    st = S.gate_stats(g)
    df = R.gate_hist_frame(st["hist"], st["edges"], run="r", mini_epoch=1, block="se1")
    assert list(df.columns) == ["run", "mini_epoch", "block", "bin_left", "bin_right", "count"]
    assert len(df) == 20 and df["count"].sum() == 6
    assert df["count"].iloc[0] == 2 and df["count"].iloc[-1] == 2 and df["count"].iloc[10] == 2
    assert_array_equal(df["bin_left"], S.GATE_BINS[:-1])
    assert_array_equal(df["bin_right"], S.GATE_BINS[1:])
    with pytest.raises(ValueError):
        R.gate_hist_frame(st["hist"], st["edges"][:-1], run="r", mini_epoch=1, block="se1")


def test_logit_hist_data_dependent_and_fixed_range():
    x = np.array([[-2.0, 0.0, 1.0], [4.0, np.nan, 1.0]])
    counts, edges = R.logit_hist(x, bins=3)
    assert_array_equal(edges, [-2, 0, 2, 4])
    assert_array_equal(counts, [[1, 2, 0], [0, 1, 1]])
    counts, edges = R.logit_hist(x, bins=2, range=(-1, 1))
    assert_array_equal(edges, [-1, 0, 1])
    assert_array_equal(counts, [[1, 2], [0, 2]])  # -2 clipped into the first bin, 4 into the last
    counts, edges = R.logit_hist(np.full((2, 3), 7.0), bins=2)  # constant: widened like np.histogram
    assert_array_equal(edges, [6.5, 7, 7.5]) and counts.sum() == 6
    counts, edges = R.logit_hist(x, bins=np.array([-10.0, 0.0, 10.0]))
    assert_array_equal(counts, [[1, 2], [0, 2]])
    df = R.gate_hist_frame(counts, edges, run="r", mini_epoch=0, block="se1/logits")
    assert df["count"].tolist() == [1, 4]


# -------------------------------------------------------- dead channels


def _frame(mini_epoch: int, layer: str, a: np.ndarray) -> pd.DataFrame:
    return R.channel_stats_frame(R.channel_stats(a), run="r", mini_epoch=mini_epoch, layer=layer)


def test_dead_channels_requires_every_probe():
    a = known()  # channel 1 is zero on probe 0 only -> not dead
    b = np.zeros((2, 2, 2, 3), dtype=np.float32)
    b[:, :, :, 0] = 1.0  # channels 1 and 2 zero on both probes -> dead
    frame = R.concat_frames([_frame(0, "conv", a), _frame(1, "conv", b), _frame(1, "fc", a)])
    out = S.dead_channels(frame)
    assert list(out.columns) == ["run", "mini_epoch", "layer", "n_channels", "n_dead", "frac_dead"]
    got = {(r.mini_epoch, r.layer): (r.n_dead, r.n_channels) for r in out.itertuples()}
    assert got == {(0, "conv"): (0, 3), (1, "conv"): (2, 3), (1, "fc"): (0, 3)}
    mask = S.dead_channel_mask(frame)
    dead = mask[(mask.mini_epoch == 1) & (mask.layer == "conv")]["dead"].tolist()
    assert dead == [False, True, True]


def test_dead_channels_eps():
    b = np.zeros((2, 1, 1, 2), dtype=np.float32)
    b[:, 0, 0, 1] = 1e-4
    frame = _frame(0, "conv", b)
    assert S.dead_channels(frame)["n_dead"].tolist() == [1]
    assert S.dead_channels(frame, eps=1e-3)["n_dead"].tolist() == [2]


def test_gate_hist_float32_edges():
    g = np.array([[0.05, 0.95, 0.5]], dtype=np.float32)
    hist = S.gate_stats(g)["hist"][0]
    assert hist[1] == 1 and hist[19] == 1 and hist[10] == 1


# ------------------------------------------------------- stacked taps (sweep engine)


def _three_taps() -> list[np.ndarray]:
    """Three taps of one batch (N = 4) with different shapes and channel counts.

    * conv-like (4, 3, 5, 2): random, mixed signs, clean (fast path);
    * sequence-like (4, 6, 3): NaN and ±Inf (masked path), channel 1 of probe 2 all NaN (empty);
    * dense-like (4, 5), positive: channels 0 and 3 exactly zero on every probe (dead),
      channel 4 negative on probe 1 and channel 1 zero on probe 2 (dead there only).
    """
    rng = np.random.default_rng(11)
    a = rng.standard_normal((4, 3, 5, 2)).astype(np.float32)
    b = (3.0 + rng.standard_normal((4, 6, 3))).astype(np.float32)
    b[0, 1, 0] = np.nan
    b[0, 4, 2] = np.inf
    b[3, 0, 1] = -np.inf
    b[2, :, 1] = np.nan
    b[1, 2, 2] = 0.0
    c = (0.1 + np.abs(rng.standard_normal((4, 5)))).astype(np.float32)
    c[:, [0, 3]] = 0.0
    c[1, 4] = -abs(c[1, 4]) - 0.1
    c[2, 1] = 0.0
    return [a, b, c]


def _stack(ms: list[S.Moments]) -> tuple[S.Moments, np.ndarray]:
    """Per-tap moments stacked along channels, as the sweep builds them; plus the tap offsets."""
    fields = ("count", "s", "m2", "abs_sum", "min", "max", "n_zero", "n_nan", "n_inf")
    widths = [m.count.shape[1] for m in ms]
    total = np.repeat(np.array([m.total for m in ms], dtype=np.int64), widths)
    stacked = S.Moments(total=total, **{f: np.concatenate([getattr(m, f) for m in ms], axis=1) for f in fields})
    return stacked, np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)


def _assert_stats_equal(got: dict, want: dict, names, what: str) -> None:
    for k in names:
        g, w = np.asarray(got[k]), np.asarray(want[k])
        assert g.shape == w.shape, f"{what} {k}: shape {g.shape} != {w.shape}"
        if k in ("n_nan", "n_inf"):
            assert_array_equal(g, w, err_msg=f"{what} {k}")
        else:
            assert_allclose(g, w, rtol=1e-12, atol=0, equal_nan=True, err_msg=f"{what} {k}")


def test_three_taps_cover_the_interesting_cases():
    """Guard for the stacked tests below: the data really has NaN/Inf, an empty channel and dead channels."""
    a, b, c = _three_taps()
    mb, mc = S.moments(b), S.moments(c)
    assert mb.n_nan.sum() == 1 + 6 and mb.n_inf.sum() == 2
    assert np.isnan(mb.min[2, 1]) and mb.count[2, 1] == 0  # empty channel
    assert_array_equal(R.layer_stats_from_moments(mc)["frac_dead_channels"], [2 / 5, 3 / 5, 3 / 5, 2 / 5])
    assert S.moments(a).total == 15 and mb.total == 6 and mc.total == 1


@pytest.mark.parametrize("dead_eps", [0.0, 0.5])
def test_stacked_layer_stats_equal_per_tap(dead_eps):
    taps = _three_taps()
    ms = [S.moments(t) for t in taps]
    stacked, offsets = _stack(ms)
    assert_array_equal(offsets, [0, 2, 5, 10])
    got = S.stacked_layer_stats(stacked, offsets, dead_eps=dead_eps)
    assert set(got) == set(S.LAYER_STAT_NAMES)
    for k in S.LAYER_STAT_NAMES:
        assert np.shape(got[k]) == (4, 3), k
    for i, m in enumerate(ms):
        want = R.layer_stats_from_moments(m, dead_eps=dead_eps)
        _assert_stats_equal({k: v[:, i] for k, v in got.items()}, want, S.LAYER_STAT_NAMES, f"tap {i}")
    # and layer_stats_from_moments itself agrees with layer_stats on the raw taps
    for i, t in enumerate(taps):
        _assert_stats_equal({k: v[:, i] for k, v in got.items()}, R.layer_stats(t, dead_eps=dead_eps),
                            S.LAYER_STAT_NAMES, f"raw tap {i}")


def test_stacked_layer_stats_known_values():
    """Hand-checked values: the stacked reductions must not mix taps (frac_zero uses each tap's own total)."""
    t0 = np.array([[[1.0, 0.0], [3.0, 0.0]]])  # (1, 2, 2): 2 positions, 2 channels, channel 1 dead
    t1 = np.array([[0.0, 2.0, -4.0]])  # (1, 3): 1 position, 3 channels, channels 0 and 2 dead
    stacked, offsets = _stack([S.moments(t0), S.moments(t1)])
    assert_array_equal(stacked.total, [2, 2, 1, 1, 1])
    got = S.stacked_layer_stats(stacked, offsets)
    assert_array_equal(got["min"], [[0.0, -4.0]])
    assert_array_equal(got["max"], [[3.0, 2.0]])
    assert_array_equal(got["mean"], [[1.0, -2 / 3]])
    assert_allclose(got["std"], [[np.sqrt(1.5), np.sqrt(56 / 9)]], rtol=1e-15)
    assert_array_equal(got["mean_abs"], [[1.0, 2.0]])
    assert_array_equal(got["frac_zero"], [[0.5, 1 / 3]])
    assert_array_equal(got["frac_dead_channels"], [[0.5, 2 / 3]])


def test_stacked_layer_stats_tap_without_positions():
    """A tap with no positions (total 0) gives NaN stats and frac_zero, as the per-tap function does."""
    ms = [S.moments(np.ones((2, 3, 2), np.float32)), S.moments(np.zeros((2, 0, 3), np.float32))]
    stacked, offsets = _stack(ms)
    got = S.stacked_layer_stats(stacked, offsets)
    for i, m in enumerate(ms):
        _assert_stats_equal({k: v[:, i] for k, v in got.items()}, R.layer_stats_from_moments(m),
                            S.LAYER_STAT_NAMES, f"tap {i}")
    assert np.isnan(got["frac_zero"][:, 1]).all() and (got["frac_zero"][:, 0] == 0).all()


def test_channel_stats_from_moments_with_array_total():
    ms = [S.moments(t) for t in _three_taps()]
    stacked, offsets = _stack(ms)
    got = S.channel_stats_from_moments(stacked)
    for k in S.STAT_NAMES:
        assert np.shape(got[k]) == (4, 10), k
    for i, m in enumerate(ms):
        want = S.channel_stats_from_moments(m)
        cols = slice(int(offsets[i]), int(offsets[i + 1]))
        _assert_stats_equal({k: np.asarray(v)[:, cols] for k, v in got.items()}, want, S.STAT_NAMES, f"tap {i}")
    # frac_zero is over each tap's own positions: the dense tap's zeros are whole (1 position).
    assert_array_equal(got["frac_zero"][:, 5], 1.0)
    assert got["frac_zero"].dtype == np.float64


@pytest.mark.parametrize("offsets", [[0, 2, 2, 5], [0, 3, 2, 5], [0]], ids=["zero-width", "negative", "no-taps"])
def test_stacked_layer_stats_rejects_empty_taps(offsets):
    stacked, _ = _stack([S.moments(np.ones((1, 2, 5), np.float32))])
    with pytest.raises(ValueError, match="at least one channel"):
        S.stacked_layer_stats(stacked, np.array(offsets))
