"""Exact-answer tests for core.weightstats on small known weight dicts."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_array_equal

from core import weightstats as W

pytestmark = pytest.mark.filterwarnings("error")


def ckpt(scale: float = 1.0) -> dict[str, np.ndarray]:
    """A tiny checkpoint in model order: Dense, BatchNorm, LayerNorm, a seed-generator state."""
    return {
        "dense/kernel": np.full((2, 2), scale, dtype=np.float32),
        "dense/bias": np.zeros(2, dtype=np.float32),
        "bn/gamma": np.array([1.0, 0.5, 1e-4, -2e-3], dtype=np.float32),
        "bn/beta": np.array([0.0, 1.0, 2.0, 3.0], dtype=np.float32),
        "bn/moving_mean": np.array([1.0, -3.0, 0.0, 2.0], dtype=np.float32),
        "bn/moving_variance": np.array([1.0, 2.0, 3.0, 6.0], dtype=np.float32),
        "ln/gamma": np.ones(3, dtype=np.float32),
        "ln/beta": np.zeros(3, dtype=np.float32),
        "random_flip/seed_generator/seed_generator_state": np.array([1, 0], dtype=np.uint32),
    }


def test_split_path():
    assert W.split_path("block1_conv1/kernel") == ("block1_conv1", "kernel")
    assert W.split_path("functional/se1/squeeze/bias") == ("functional/se1/squeeze", "bias")
    assert W.split_path("bias") == ("bias", "bias")


def test_norms_exact():
    n = W.norms(np.array([3.0, -4.0], dtype=np.float32))
    assert (n.l2, n.rms, n.max_abs, n.n_nan, n.n_inf, n.size) == (5.0, np.sqrt(12.5), 4.0, 0, 0, 2)
    n = W.norms(np.array([3.0, np.nan, np.inf, -4.0, -np.inf]))
    assert (n.l2, n.max_abs, n.n_nan, n.n_inf, n.size) == (5.0, 4.0, 1, 2, 5)
    n = W.norms(np.array([np.nan]))
    assert np.isnan(n.l2) and n.n_nan == 1


def test_weight_norms_selects_trainables_in_model_order():
    df = W.weight_norms(ckpt())
    assert list(df.columns) == ["layer", "variable", "l2", "rms", "max_abs", "n_nan", "n_inf", "size"]
    assert list(zip(df.layer, df.variable)) == [
        ("dense", "kernel"), ("dense", "bias"), ("bn", "gamma"), ("bn", "beta"), ("ln", "gamma"), ("ln", "beta")]
    k = df.iloc[0]
    assert k.l2 == 2.0 and k.rms == 1.0 and k.max_abs == 1.0 and k["size"] == 4
    assert isinstance(df["layer"].dtype, pd.CategoricalDtype)
    # names=None: every floating variable (moving stats included, integer seed state excluded).
    all_vars = W.weight_norms(ckpt(), names=None)
    assert len(all_vars) == 8 and "seed_generator_state" not in set(all_vars.variable)


def test_update_ratio_exactly_one_and_distances():
    w0, w1 = {"d/kernel": np.ones((3, 4))}, {"d/kernel": 2 * np.ones((3, 4))}
    df = W.weight_table([(0, w0), (1, w1)], init=w0)
    assert list(df.columns) == ["mini_epoch", "layer", "variable", "norm", "dist_from_init",
                                "rel_dist_from_init", "update_norm", "update_ratio", "n_nan", "n_inf"]
    r0, r1 = df.iloc[0], df.iloc[1]
    assert r0.norm == np.sqrt(12) and r0.dist_from_init == 0 and r0.rel_dist_from_init == 0
    assert np.isnan(r0.update_norm) and np.isnan(r0.update_ratio)  # no previous checkpoint
    assert r1.norm == 2 * np.sqrt(12)
    assert r1.dist_from_init == np.sqrt(12) and r1.rel_dist_from_init == 1.0
    assert r1.update_norm == np.sqrt(12) and r1.update_ratio == 1.0
    assert df["mini_epoch"].dtype == np.int32 and df["n_nan"].dtype == np.int64


def test_update_ratio_uses_previous_not_init():
    w = [{"d/kernel": np.full(4, v, dtype=np.float32)} for v in (1.0, 2.0, 4.0)]
    df = W.weight_table(enumerate(w), init=w[0])
    # mini-epoch 2: ‖4-2‖/‖2‖ = 1, ‖4-1‖/‖1‖ = 3
    assert df.update_ratio.tolist()[1:] == [1.0, 1.0]
    assert df.rel_dist_from_init.tolist() == [0.0, 1.0, 3.0]
    assert df.update_norm.iloc[2] == 4.0  # sqrt(4 * 2^2)


def test_zero_denominators_give_nan_and_missing_or_reshaped_variables():
    w0 = {"d/bias": np.zeros(2), "d/kernel": np.ones(2)}
    w1 = {"d/bias": np.array([3.0, 4.0]), "d/kernel": np.ones(3), "new/kernel": np.ones(2)}
    df = W.weight_table([(0, w0), (1, w1)], init=w0).set_index(["mini_epoch", "layer", "variable"])
    bias = df.loc[(1, "d", "bias")]
    assert bias.dist_from_init == 5.0 and bias.update_norm == 5.0
    assert np.isnan(bias.rel_dist_from_init) and np.isnan(bias.update_ratio)  # ‖W0‖ = 0
    assert np.isnan(df.loc[(1, "d", "kernel")].dist_from_init)  # shape changed
    assert np.isnan(df.loc[(1, "new", "kernel")].update_norm)  # not in the previous checkpoint


def test_nan_inf_in_weights():
    w0 = {"d/kernel": np.array([1.0, 1.0, 1.0])}
    w1 = {"d/kernel": np.array([4.0, np.nan, np.inf])}
    r = W.weight_table([(0, w0), (1, w1)], init=w0).iloc[1]
    assert r.n_nan == 1 and r.n_inf == 1
    assert r.norm == 4.0 and r.update_norm == 3.0  # finite entries only


def test_prev_seeds_the_stream():
    w0, w1 = {"d/kernel": np.ones(2)}, {"d/kernel": 3 * np.ones(2)}
    df = W.weight_table([(5, w1)], init=w0, prev=w0)
    assert df.update_ratio.tolist() == [2.0] and df.mini_epoch.tolist() == [5]


def test_weight_table_streams_and_frees_old_checkpoints():
    consumed = []
    refs: list[weakref.ref] = []

    def gen():
        for t in range(5):
            if t >= 2:
                gc.collect()
                # Only init and the previous checkpoint may be alive while t is produced.
                assert refs[t - 2]() is None, f"checkpoint {t - 2} still referenced at {t}"
            arr = np.full((8, 8), float(t + 1))
            refs.append(weakref.ref(arr))
            consumed.append(t)
            yield t, {"conv/kernel": arr}
            del arr

    init = {"conv/kernel": np.ones((8, 8))}
    g = gen()
    df = W.weight_table(g, init=init)
    assert consumed == [0, 1, 2, 3, 4] and next(g, None) is None  # consumed exactly once
    assert df.mini_epoch.tolist() == [0, 1, 2, 3, 4]
    assert df.update_ratio.tolist()[1:] == pytest.approx([1.0, 0.5, 1 / 3, 0.25], rel=1e-15)


def test_batchnorm_table_known_values():
    df = W.batchnorm_table([(0, ckpt()), (1, ckpt(2.0))])
    assert list(df.columns) == ["mini_epoch", "layer", "gamma_mean", "gamma_min", "gamma_max", "beta_mean",
                                "moving_mean_mean", "moving_mean_abs_mean", "moving_variance_mean",
                                "moving_variance_min", "frac_gamma_near_zero"]
    assert df.layer.tolist() == ["bn", "bn"]  # ln has gamma/beta but no moving statistics
    r = df.iloc[0]
    assert r.gamma_min == pytest.approx(-2e-3) and r.gamma_max == 1.0
    assert r.gamma_mean == pytest.approx((1.0 + 0.5 + 1e-4 - 2e-3) / 4)
    assert r.beta_mean == 1.5
    assert r.moving_mean_mean == 0.0 and r.moving_mean_abs_mean == 1.5
    assert r.moving_variance_mean == 3.0 and r.moving_variance_min == 1.0
    assert r.frac_gamma_near_zero == 0.25  # only 1e-4; |-2e-3| >= 1e-3
    assert W.batchnorm_table([(0, ckpt())], gamma_eps=1e-2).frac_gamma_near_zero.tolist() == [0.5]
    assert df.mini_epoch.dtype == np.int32 and isinstance(df.layer.dtype, pd.CategoricalDtype)


def test_batchnorm_without_scale_and_center():
    w = {"bn/moving_mean": np.array([2.0, -2.0]), "bn/moving_variance": np.array([1.0, 3.0])}
    r = W.batchnorm_table([(0, w)]).iloc[0]
    assert np.isnan(r.gamma_mean) and np.isnan(r.beta_mean) and np.isnan(r.frac_gamma_near_zero)
    assert r.moving_mean_abs_mean == 2.0 and r.moving_variance_min == 1.0


def test_empty_tables_have_columns():
    assert list(W.weight_table([], init={}).columns)[:3] == ["mini_epoch", "layer", "variable"]
    assert len(W.batchnorm_table([])) == 0 and "gamma_mean" in W.batchnorm_table([]).columns


def test_update_ratio_per_step():
    assert W.update_ratio_per_step(0.1, 100) == pytest.approx(1e-3)
    assert_array_equal(W.update_ratio_per_step(np.array([0.2, 0.3]), np.array([2, 0])), [0.1, np.nan])
    s = pd.Series([0.5, np.nan], index=[3, 4], name="update_ratio")
    out = W.update_ratio_per_step(s, 5)
    assert isinstance(out, pd.Series) and out.index.tolist() == [3, 4] and out.iloc[0] == 0.1


def test_iter_npz(tmp_path):
    paths = []
    for t in range(3):
        p = tmp_path / f"ckpt_{t:06d}.npz"
        np.savez(p, **{"d/kernel": np.full(4, t + 1.0)})
        paths.append((t, str(p)))
    df = W.weight_table(W.iter_npz(paths), init=dict(np.load(paths[0][1])))
    assert df.update_ratio.tolist()[1:] == [1.0, 0.5]
