"""Sweep: in-graph statistics equal numpy's, caching, invalidation, resume, NaN handling, streaming."""
from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

from core import stats as S
from core.engine import RunEngine, run_probe_set, single_probe
from core.runs import Run, RunWriter, read_npz_weights
from core.sweep import SweepOptions, batch_mean_var, sweep


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Run:
    shutil.copytree(tiny_run.path, tmp_path / "r", ignore=shutil.ignore_patterns("cache"))
    return Run(tmp_path / "r")


def test_tables_match_numpy_on_raw_activations(run_copy):
    eng = RunEngine(run_copy)
    res = sweep(run_copy, engine=eng)
    probes = run_probe_set(run_copy)
    c = run_copy.checkpoints()[2]
    acts = eng.activations(c, probes.images)
    ch = res.channels[res.channels.mini_epoch == 2]
    for tap in ["stem_conv", "block2_add", "block1_se_gate", "dense1"]:
        ref = S.channel_stats(acts[tap])
        got = ch[ch.layer == tap].sort_values(["probe", "channel"])
        n, c_ = ref["mean"].shape
        for k in ("min", "max", "mean", "std", "mean_abs", "frac_zero"):
            np.testing.assert_allclose(got[k].to_numpy().reshape(n, c_), ref[k], rtol=2e-4, atol=1e-5, err_msg=f"{tap} {k}")
        lref = S.layer_stats(acts[tap])
        lg = res.layers[(res.layers.mini_epoch == 2) & (res.layers.layer == tap)].sort_values("probe")
        np.testing.assert_allclose(lg["std"].to_numpy(), lref["std"], rtol=2e-4, atol=1e-6)
    gates = res.gate_channels[(res.gate_channels.mini_epoch == 2) & (res.gate_channels.block == res.se_blocks[0])]
    b = eng.se_blocks[0]
    np.testing.assert_allclose(gates.sort_values(["probe", "channel"])["gate"].to_numpy(),
                               acts[b.gate].reshape(-1), rtol=1e-5)
    assert set(res.tables) >= {"channels", "layers", "gates", "gate_hist", "weights", "batchnorm", "extras", "grads"}
    assert len(res.se_blocks) == 3
    assert res.mini_epochs == [0, 1, 2, 3]
    # histogram counts: every gate of every probe once
    gh = res.gate_hist[(res.gate_hist.kind == "gate") & (res.gate_hist.mini_epoch == 1)]
    assert gh.groupby("block", observed=True)["count"].sum().to_dict() == {
        b.name: len(probes) * b.channels for b in eng.se_blocks}


def test_batch_mean_var_equals_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(3.0, 2.0, (4, 5, 5, 3)).astype(np.float32)
    mean, var = batch_mean_var(S.moments(a))
    flat = a.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-9)
    np.testing.assert_allclose(var, flat.var(0), rtol=1e-9)


def test_cache_reused_and_invalidated_when_checkpoint_changes(run_copy):
    calls = []
    first = sweep(run_copy, progress=lambda d, t, m: calls.append(m))
    assert all("cached" not in m for m in calls)
    calls.clear()
    again = sweep(run_copy, progress=lambda d, t, m: calls.append(m))
    assert all("cached" in m for m in calls)
    assert again.layers.equals(first.layers)
    w = read_npz_weights(run_copy.checkpoint(2).path)
    w = {k: v * (0.5 if k.endswith("kernel") else 1) for k, v in w.items()}
    RunWriter(run_copy.path).write_checkpoint(2, w)
    calls.clear()
    third = sweep(run_copy, progress=lambda d, t, m: calls.append(m))
    # 3 keeps its activation tables but its update ratio (vs the changed 2) is recomputed
    assert [("cached" in m) for m in calls] == [True, True, False, False]
    l2 = lambda r: r.layers[(r.layers.mini_epoch == 2) & (r.layers.layer == "stem_conv")]["std"].mean()  # noqa
    assert l2(third) == pytest.approx(0.5 * l2(first), rel=1e-3)


def test_interrupted_sweep_resumes(run_copy):
    stop = threading.Event()

    def progress(done, total, msg):
        if done == 2:
            stop.set()

    part = sweep(run_copy, progress=progress, stop=stop)
    assert part.mini_epochs == [0, 1] and any("stopped" in p for p in part.problems)
    calls = []
    full = sweep(run_copy, progress=lambda d, t, m: calls.append(m))
    assert full.mini_epochs == [0, 1, 2, 3]
    assert ["cached" in m for m in calls] == [True, True, False, False]


def test_nan_weights_give_nan_statistics_and_a_record(runs_root):
    run = Run(runs_root / "tiny-nan")
    res = sweep(run)
    ex = res.extras.set_index("mini_epoch")
    assert ex.loc[1, "n_nan_weights"] == 0 and ex.loc[2, "n_nan_weights"] > 0
    lay = res.layers
    assert (lay[lay.mini_epoch == 1]["n_nan"] == 0).all()
    bad = lay[(lay.mini_epoch == 2) & (lay.n_nan > 0)]
    assert len(bad) > 0
    assert res.weights[(res.weights.mini_epoch == 2)]["n_nan"].sum() > 0


def test_unreadable_checkpoint_reported_others_swept(run_copy):
    p = run_copy.checkpoint(1).path
    p.write_bytes(p.read_bytes()[:100])
    res = sweep(run_copy, options=SweepOptions(train_mode=False, gradients=False))
    assert res.mini_epochs == [0, 2, 3]
    assert any("ckpt_000001.npz" in pr for pr in res.problems)


def test_single_uploaded_probe(run_copy):
    img = np.full((24, 24, 3), 128, np.uint8)
    res = sweep(run_copy, single_probe(img, "upload:x"), options=SweepOptions(train_mode=False, gradients=False))
    assert res.probe_ids == ("upload:x",) and res.mini_epochs == [0, 1, 2, 3]
    assert res.extras["loss"].isna().all()  # no label: no loss


def test_weights_tables(run_copy):
    res = sweep(run_copy)
    w = res.weights
    k = w[(w.layer == "stem_conv") & (w.variable == "kernel")].sort_values("mini_epoch")
    assert k["dist_from_init"].iloc[0] == 0 and np.isnan(k["update_ratio"].iloc[0])
    assert (k["update_ratio"].iloc[1:] > 0).all()
    assert set(res.batchnorm["layer"].astype(str)) >= {"stem_bn", "block1_bn1"}
    assert res.grads["grad_norm"].gt(0).any()
