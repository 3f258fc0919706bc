"""Exact-answer tests for core.analysis.weightstats on small known weight dicts."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_array_equal

from core.analysis import weightstats as W

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


# ------------------------------------------------ vectorised weight_rows vs the per-variable loop

_LOOP = W._weight_rows_loop  # the reference, captured before any test wraps it
_FLOAT_COLS = ("norm", "dist_from_init", "rel_dist_from_init", "update_norm", "update_ratio")
_TRACKED = ["conv/kernel", "conv/bias", "bn/gamma", "bn/beta", "dense/kernel", "dense/bias", "frozen/bias"]


def run_ckpts(n: int = 4) -> list[dict[str, np.ndarray]]:
    """``n`` checkpoints of a small model in model order, drifting randomly from a Keras-like init.

    conv/bias, dense/bias and bn/beta start at exactly 0 (relative distance NaN, first update ratio
    NaN); frozen/bias stays 0 throughout (0/0 every time); moving statistics and the integer seed
    state are not tracked.
    """
    rng = np.random.default_rng(7)
    base = {
        "conv/kernel": rng.standard_normal((3, 3, 2, 4)).astype(np.float32),
        "conv/bias": np.zeros(4, np.float32),
        "bn/gamma": np.ones(4, np.float32),
        "bn/beta": np.zeros(4, np.float32),
        "bn/moving_mean": np.zeros(4, np.float32),
        "bn/moving_variance": np.ones(4, np.float32),
        "dense/kernel": rng.standard_normal((4, 3)).astype(np.float32),
        "dense/bias": np.zeros(3, np.float32),
        "frozen/bias": np.zeros(2, np.float32),
        "rng/seed_generator_state": np.array([1, 0], np.uint32),
    }
    out = [base]
    for _ in range(n - 1):
        w = {}
        for k, v in out[-1].items():
            moves = v.dtype.kind == "f" and k != "frozen/bias"
            w[k] = (v + 0.1 * rng.standard_normal(v.shape)).astype(v.dtype) if moves else v.copy()
        out.append(w)
    return out


def _expected(me, w, init, prev) -> list[dict]:
    return _LOOP(me, W._selected(w, W.TRAINABLE_NAMES), init, prev)


def assert_rows_equal(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert list(g) == list(w)
        where = f"{w['mini_epoch']} {w['layer']}/{w['variable']}"
        for k in ("mini_epoch", "layer", "variable", "n_nan", "n_inf"):
            assert g[k] == w[k] and type(g[k]) is type(w[k]), f"{where} {k}: {g[k]!r} != {w[k]!r}"
        for k in _FLOAT_COLS:
            assert isinstance(g[k], float), f"{where} {k} is {type(g[k])}"
            np.testing.assert_allclose(g[k], w[k], rtol=1e-12, atol=0, equal_nan=True, err_msg=f"{where} {k}")


def _norm(a, b=None) -> float:
    """Independent reference: float64 L2 norm of a (or a − b) over the entries finite in both."""
    d = np.asarray(a, np.float64) - (0 if b is None else np.asarray(b, np.float64))
    d = d[np.isfinite(d)]
    return float(np.sqrt((d * d).sum()))


def _by_path(rows: list[dict]) -> dict[str, dict]:
    return {f"{r['layer']}/{r['variable']}": r for r in rows}


@pytest.fixture
def loop_calls(monkeypatch) -> list[int]:
    """Mini-epochs for which weight_rows fell back to the per-variable loop."""
    calls: list[int] = []

    def spy(mini_epoch, *args, **kw):
        calls.append(mini_epoch)
        return _LOOP(mini_epoch, *args, **kw)

    monkeypatch.setattr(W, "_weight_rows_loop", spy)
    return calls


def test_weight_rows_vectorised_equals_loop_plain_dicts(loop_calls):
    ck = run_ckpts()
    for t, w in enumerate(ck):
        prev = ck[t - 1] if t else None
        rows, sel = W.weight_rows(t, w, init=ck[0], prev=prev)
        assert_rows_equal(rows, _expected(t, w, ck[0], prev))
        assert isinstance(sel, W.Selected) and list(sel) == _TRACKED
        r = _by_path(rows)
        # independent values (not only "same as the loop")
        np.testing.assert_allclose(r["dense/kernel"]["norm"], _norm(w["dense/kernel"]), rtol=1e-12)
        np.testing.assert_allclose(r["conv/kernel"]["dist_from_init"], _norm(w["conv/kernel"], ck[0]["conv/kernel"]),
                                   rtol=1e-12, atol=0)
        for b in ("conv/bias", "dense/bias", "bn/beta", "frozen/bias"):  # zero-initialised: ratio to ‖W0‖ = 0
            assert np.isnan(r[b]["rel_dist_from_init"]), b
        assert r["frozen/bias"]["dist_from_init"] == 0.0
        if t == 0:
            assert all(np.isnan(x["update_norm"]) and np.isnan(x["update_ratio"]) for x in rows)
        else:
            u = r["conv/kernel"]
            np.testing.assert_allclose(u["update_ratio"], _norm(w["conv/kernel"], prev["conv/kernel"])
                                       / _norm(prev["conv/kernel"]), rtol=1e-12)
            # ‖W_{t-1}‖ = 0: at t = 1 for the zero-initialised biases, always for the frozen one
            assert np.isnan(r["conv/bias"]["update_ratio"]) == (t == 1)
            assert np.isnan(r["frozen/bias"]["update_ratio"]) and r["frozen/bias"]["update_norm"] == 0.0
            assert np.isfinite(r["conv/bias"]["update_norm"]) and r["conv/bias"]["update_norm"] > 0
    assert loop_calls == []  # the clean case takes the vectorised path: the comparison above is not loop vs loop


def test_weight_rows_selected_passed_back_as_prev(loop_calls):
    ck = run_ckpts()
    init = W.select(ck[0])
    assert isinstance(init, W.Selected) and list(init) == _TRACKED
    prev = None
    for t, w in enumerate(ck):
        rows, sel = W.weight_rows(t, w, init=init, prev=prev)
        assert_rows_equal(rows, _expected(t, w, ck[0], ck[t - 1] if t else None))
        assert isinstance(sel, W.Selected) and sel is not prev
        prev = sel  # handed back 3 times (t = 1, 2, 3)
    assert loop_calls == []


def test_weight_rows_in_chunks_equal_loop(loop_calls, monkeypatch):
    """Arrays longer than the float64 buffer are summed chunk by chunk: the same rows as the loop."""
    monkeypatch.setattr(W, "_CHUNK", 7)  # conv/kernel (72 values) takes 11 chunks, the biases one
    ck = run_ckpts()
    prev = None
    for t, w in enumerate(ck):
        rows, prev = W.weight_rows(t, w, init=W.select(ck[0]), prev=prev)
        assert_rows_equal(rows, _expected(t, w, ck[0], ck[t - 1] if t else None))
    assert loop_calls == []


def test_selected_caches_l2():
    ck = run_ckpts()
    init = W.select(ck[0])
    assert init.l2 is None
    rows1, sel1 = W.weight_rows(1, ck[1], init=init, prev=None)
    l2 = init.l2
    assert l2 is not None
    arrays = [ck[0][k] for k in _TRACKED]
    np.testing.assert_allclose(l2, [_norm(a) for a in arrays], rtol=1e-12, atol=0)
    # the returned Selected carries its own cache, ready for the next checkpoint
    np.testing.assert_allclose(sel1.l2, [r["norm"] for r in rows1], rtol=0)
    sel1_l2 = sel1.l2
    rows2, _ = W.weight_rows(2, ck[2], init=init, prev=sel1)
    assert init.l2 is l2 and sel1.l2 is sel1_l2  # reused, not recomputed
    assert_rows_equal(rows2, _expected(2, ck[2], ck[0], ck[1]))
    # ...and really read from the cache: a (deliberately) wrong cached ‖W0‖ shows in the result
    init.l2 = 2 * l2
    rows2b, _ = W.weight_rows(2, ck[2], init=init, prev=sel1)
    got = np.array([r["rel_dist_from_init"] for r in rows2b])
    want = np.array([r["rel_dist_from_init"] for r in rows2])
    np.testing.assert_allclose(got, want / 2, rtol=1e-12, equal_nan=True)


def _without(w: dict, key: str) -> dict:
    return {k: v for k, v in w.items() if k != key}


def _case(name: str):
    """(w, init, prev, check) for one fallback case; ``check(rows)`` asserts independent values."""
    ck = run_ckpts()
    w, init, prev = ck[2], ck[0], ck[1]
    if name == "missing-in-init":
        init = _without(init, "dense/kernel")

        def check(r):
            assert np.isnan(r["dense/kernel"]["dist_from_init"]) and np.isnan(r["dense/kernel"]["rel_dist_from_init"])
            assert np.isfinite(r["dense/kernel"]["update_ratio"])
            np.testing.assert_allclose(r["conv/kernel"]["dist_from_init"], _norm(w["conv/kernel"], init["conv/kernel"]),
                                       rtol=1e-12)
    elif name == "shape-mismatch-in-prev":
        prev = {**prev, "dense/kernel": prev["dense/kernel"].reshape(3, 4)}  # same size, other shape

        def check(r):
            assert np.isnan(r["dense/kernel"]["update_norm"]) and np.isnan(r["dense/kernel"]["update_ratio"])
            assert np.isfinite(r["dense/kernel"]["dist_from_init"])
            np.testing.assert_allclose(r["conv/kernel"]["update_norm"], _norm(w["conv/kernel"], prev["conv/kernel"]),
                                       rtol=1e-12)
    elif name == "nan-in-current":
        w = {**w, "conv/kernel": w["conv/kernel"].copy(), "dense/kernel": w["dense/kernel"].copy()}
        w["conv/kernel"][0, 0, 0, 0] = np.nan
        w["dense/kernel"][1, 1] = -np.inf

        def check(r):
            assert (r["conv/kernel"]["n_nan"], r["conv/kernel"]["n_inf"]) == (1, 0)
            assert (r["dense/kernel"]["n_nan"], r["dense/kernel"]["n_inf"]) == (0, 1)
            np.testing.assert_allclose(r["conv/kernel"]["norm"], _norm(w["conv/kernel"]), rtol=1e-12)
            np.testing.assert_allclose(r["dense/kernel"]["update_norm"],
                                       _norm(w["dense/kernel"], prev["dense/kernel"]), rtol=1e-12)
            assert np.isfinite(r["dense/kernel"]["norm"])
    elif name == "nan-in-init":
        init = {**init, "conv/kernel": init["conv/kernel"].copy()}
        init["conv/kernel"][1, 2, 0, 3] = np.nan

        def check(r):
            c = r["conv/kernel"]
            dist = _norm(w["conv/kernel"], init["conv/kernel"])
            np.testing.assert_allclose(c["dist_from_init"], dist, rtol=1e-12)
            np.testing.assert_allclose(c["rel_dist_from_init"], dist / _norm(init["conv/kernel"]), rtol=1e-12)
            assert c["n_nan"] == 0
            np.testing.assert_allclose(r["dense/kernel"]["dist_from_init"],
                                       _norm(w["dense/kernel"], init["dense/kernel"]), rtol=1e-12)
    elif name == "zero-init-bias":
        def check(r):
            assert np.isnan(r["conv/bias"]["rel_dist_from_init"]) and r["conv/bias"]["dist_from_init"] > 0
            assert np.isfinite(r["conv/bias"]["update_ratio"])
            assert np.isnan(r["frozen/bias"]["update_ratio"]) and np.isnan(r["frozen/bias"]["rel_dist_from_init"])
    else:
        raise AssertionError(name)
    return w, init, prev, check


_CASES = ["missing-in-init", "shape-mismatch-in-prev", "nan-in-current", "nan-in-init", "zero-init-bias"]


@pytest.mark.parametrize("as_selected", [False, True], ids=["dicts", "selected"])
@pytest.mark.parametrize("case", _CASES)
def test_weight_rows_fallback_cases_equal_loop(case, as_selected, loop_calls):
    w, init, prev, check = _case(case)
    snapshot = [{k: v.copy() for k, v in d.items()} for d in (w, init, prev)]
    want = _expected(2, w, init, prev)
    ref_init, ref_prev = init, prev
    if as_selected:
        init, prev = W.select(init), W.select(prev)
        # prime their caches the way a sweep does (each was once the current checkpoint)
        W.weight_rows(0, ref_init, init=init, prev=None)
        W.weight_rows(1, ref_prev, init=prev, prev=None)
        loop_calls.clear()
    rows, sel = W.weight_rows(2, w, init=init, prev=prev)
    assert_rows_equal(rows, want)
    check(_by_path(rows))
    if case == "zero-init-bias":
        assert loop_calls == []  # a zero denominator is no reason to leave the vectorised path
    assert list(sel) == _TRACKED
    for before, after in zip(snapshot, (w, ref_init, ref_prev)):  # the inputs are not modified
        assert list(before) == list(after)
        for k in before:
            assert_array_equal(after[k], before[k])


def test_weight_rows_nan_checkpoint_then_clean_one(loop_calls):
    """A NaN checkpoint's Selected (its flat cache holds NaN) handed on as prev to a clean checkpoint."""
    ck = run_ckpts()
    ck[2] = {**ck[2], "dense/kernel": ck[2]["dense/kernel"].copy()}
    ck[2]["dense/kernel"][0, 0] = np.nan
    init, prev = W.select(ck[0]), None
    for t, w in enumerate(ck):
        rows, prev = W.weight_rows(t, w, init=init, prev=prev)
        assert_rows_equal(rows, _expected(t, w, ck[0], ck[t - 1] if t else None))
    r = _by_path(rows)["dense/kernel"]  # t = 3: update over the entries finite in both
    np.testing.assert_allclose(r["update_norm"], _norm(ck[3]["dense/kernel"], ck[2]["dense/kernel"]), rtol=1e-12)
    assert loop_calls[:1] == [2]  # the NaN checkpoint itself used the masked loop
