"""Sweep: in-graph statistics equal numpy's, caching, invalidation, resume, NaN handling, streaming."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from core.analysis import stats as S
from tests.core.analysis import stats_reference as R
from core.analysis import sweepcache
from core.engine.engine import RunEngine, run_probe_set, single_probe
from core.run.runs import Run, RunWriter, read_npz_weights
from core.analysis.sweep import SweepOptions, batch_mean_var, sweep
from core.analysis.sweepcache import Part, SegmentCache, concat_columns, to_frame


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
        ref = R.channel_stats(acts[tap])
        got = ch[ch.layer == tap].sort_values(["probe", "channel"])
        n, c_ = ref["mean"].shape
        for k in ("min", "max", "mean", "std", "mean_abs", "frac_zero"):
            np.testing.assert_allclose(got[k].to_numpy().reshape(n, c_), ref[k], rtol=2e-4, atol=1e-5, err_msg=f"{tap} {k}")
        lref = R.layer_stats(acts[tap])
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


# ----------------------------------------------------------------- segment cache

FAST = SweepOptions(train_mode=False, gradients=False)
_SORT = {"layers": ["mini_epoch", "layer", "probe"], "channels": ["mini_epoch", "layer", "probe", "channel"],
         "gates": ["mini_epoch", "block", "probe"], "weights": ["mini_epoch", "layer", "variable"],
         "batchnorm": ["mini_epoch", "layer"]}


def _key_dir(run: Run) -> Path:
    dirs = [d for d in run.cache_dir.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def _stamp(key_dir: Path, prefix: str, me: int) -> dict:
    return json.loads((key_dir / f"{prefix}_{me:06d}.json").read_text())


def _assert_table_equal(got, want, table: str) -> None:
    assert len(want) > 0, f"{table} is empty: nothing compared"
    assert got["mini_epoch"].is_monotonic_increasing, f"{table} rows not in checkpoint order"
    srt = lambda df: df.sort_values(_SORT[table], kind="stable").reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(srt(got), srt(want), check_categorical=True, obj=table)


def _sweep_logged(run: Run) -> tuple[object, list[str]]:
    msgs: list[str] = []
    res = sweep(run, options=FAST, progress=lambda done, total, msg: msgs.append(msg))
    return res, msgs


def _expect_msgs(recomputed: set[int]) -> list[str]:
    return [f"mini-epoch {me}" + ("" if me in recomputed else " (cached)") for me in range(4)]


@pytest.fixture
def one_segment_per_checkpoint(monkeypatch):
    """Flush after every checkpoint, so each checkpoint's rows are a segment of their own."""
    monkeypatch.setattr(sweepcache, "FLUSH_SECONDS", 0.0)


def _first_sweep(run: Run) -> tuple[object, Path, list[str]]:
    first, msgs = _sweep_logged(run)
    assert msgs == _expect_msgs({0, 1, 2, 3}) and first.mini_epochs == [0, 1, 2, 3]
    d = _key_dir(run)
    segs = [_stamp(d, "me", me)["segment"] for me in range(4)]
    assert len(set(segs)) == 4, segs  # precondition of the tests below
    assert [_stamp(d, "w", me)["segment"] for me in range(4)] == segs
    return first, d, segs


@pytest.mark.parametrize("damage", ["delete", "truncate"])
def test_damaged_segment_is_recomputed(run_copy, one_segment_per_checkpoint, damage):
    first, d, segs = _first_sweep(run_copy)
    victim = d / f"{segs[1]}.channels.parquet"
    if damage == "delete":
        victim.unlink()
    else:
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) // 2])
    second, msgs = _sweep_logged(run_copy)  # no exception
    assert msgs == _expect_msgs({1})
    assert second.problems == first.problems
    for t in ("layers", "channels", "gates"):
        _assert_table_equal(second.tables[t], first.tables[t], t)
    # the recomputed checkpoint got a new, complete segment: the next sweep reads everything back
    assert _stamp(d, "me", 1)["segment"] not in segs
    third, msgs = _sweep_logged(run_copy)
    assert msgs == _expect_msgs(set())
    for t in ("layers", "channels"):
        _assert_table_equal(third.tables[t], first.tables[t], t)


def test_damaged_activation_segment_keeps_weight_rows(run_copy, one_segment_per_checkpoint):
    first, d, segs = _first_sweep(run_copy)
    (d / f"{segs[1]}.channels.parquet").unlink()
    second, msgs = _sweep_logged(run_copy)
    assert msgs == _expect_msgs({1})
    for t in ("weights", "batchnorm"):
        _assert_table_equal(second.tables[t], first.tables[t], t)


@pytest.mark.parametrize("prefix,content", [
    ("me", b"\xff\x00{not json"),  # not even UTF-8
    ("me", b'{"identity": 3}'),  # valid JSON, not a stamp
    ("me", b'["identity", "segment"]'),
    ("w", b"{\"identity\": [1, 2"),
], ids=["me-binary", "me-no-segment", "me-list", "w-truncated"])
def test_garbage_stamp_is_recomputed(run_copy, one_segment_per_checkpoint, prefix, content):
    first, d, segs = _first_sweep(run_copy)
    (d / f"{prefix}_000002.json").write_bytes(content)
    second, msgs = _sweep_logged(run_copy)
    assert msgs == _expect_msgs({2})
    assert _stamp(d, prefix, 2)["segment"] not in segs  # rewritten
    tables = ("layers", "channels") if prefix == "me" else ("layers", "weights", "batchnorm")
    for t in tables:
        _assert_table_equal(second.tables[t], first.tables[t], t)


def _cols(me: int, n: int = 2) -> dict[str, np.ndarray]:
    return {"mini_epoch": np.full(n, me, np.int32), "layer": np.arange(n, dtype=np.int32) % 2,
            "x": np.arange(n, dtype=np.float64) + me}


def _age(paths, seconds: float) -> None:
    t = time.time() - seconds
    for p in paths:
        os.utime(p, (t, t))


def test_collect_garbage_deletes_only_old_unreferenced_segments(tmp_path, monkeypatch):
    cats = {"t": {"layer": ["a", "b"]}, "u": {"layer": ["a", "b"]}}
    cache = SegmentCache(tmp_path / "k", cats)
    root = cache.root
    cache.collect_garbage()  # no folder yet: nothing to do, no error
    # one segment, two tables (as a sweep writes activation and weight tables of a checkpoint)
    cache.write([Part(3, "me", ["id3"], {"t": _cols(3)}), Part(3, "w", ["w3"], {"u": _cols(3, 1)})])
    cache.write([Part(6, "w", ["w6"], {"u": _cols(6)})])  # a segment only a weight stamp points at
    cache.write([Part(4, "me", ["old"], {"t": _cols(4)})])
    orphan = {p.name.split(".")[0] for p in root.glob("seg-*.parquet")} - {
        _stamp(root, "me", 3)["segment"], _stamp(root, "w", 6)["segment"]}
    cache.write([Part(4, "me", ["new"], {"t": _cols(4)})])  # checkpoint 4 changed: its old segment is orphaned
    (orphan_seg,) = orphan
    assert _stamp(root, "me", 4)["segment"] != orphan_seg
    (root / "me_000009.json").write_bytes(b"\x00garbage")  # unreadable stamps are skipped, not fatal
    (root / "notes.parquet").write_bytes(b"not a segment")
    orphan_file = root / f"{orphan_seg}.t.parquet"
    everything = sorted(root.iterdir())
    assert orphan_file in everything and len(list(root.glob("seg-*.parquet"))) == 5

    cache.collect_garbage()  # all fresh: another process may still be reading the orphan
    assert sorted(root.iterdir()) == everything

    _age(everything, sweepcache.GC_AFTER_SECONDS - 30)  # not old enough yet
    cache.collect_garbage()
    assert sorted(root.iterdir()) == everything

    _age(everything, sweepcache.GC_AFTER_SECONDS + 30)
    cache.collect_garbage()
    assert sorted(root.iterdir()) == [p for p in everything if p != orphan_file]
    # the live segments are intact: both checkpoints read back
    fresh = SegmentCache(root, cats)
    for me in (3, 4):
        got = fresh.read(fresh.valid("me", me, ["id3"] if me == 3 else ["new"]), me)
        for k, v in _cols(me).items():
            np.testing.assert_array_equal(got["t"][k], v)
    assert fresh.read(fresh.valid("w", 3, ["w3"]), 3)["u"]["x"].tolist() == [3.0]
    assert fresh.read(fresh.valid("w", 6, ["w6"]), 6)["u"]["x"].tolist() == [6.0, 7.0]

    # the age limit is read when collecting: an orphan is kept under a long limit, deleted under 0
    cache.write([Part(5, "me", ["a"], {"t": _cols(5)})])
    cache.write([Part(5, "me", ["b"], {"t": _cols(5)})])
    live5 = _stamp(root, "me", 5)["segment"]
    orphan5 = [p for p in root.glob("seg-*.parquet") if p.name.split(".")[0] not in
               {live5, *(_stamp(root, "me", me)["segment"] for me in (3, 4)), _stamp(root, "w", 6)["segment"]}]
    assert len(orphan5) == 1
    _age(orphan5, 1000)
    monkeypatch.setattr(sweepcache, "GC_AFTER_SECONDS", 1e6)
    cache.collect_garbage()
    assert orphan5[0].exists()
    monkeypatch.setattr(sweepcache, "GC_AFTER_SECONDS", 0.0)
    cache.collect_garbage()
    assert not orphan5[0].exists() and (root / f"{live5}.t.parquet").exists()


def test_channels_table_order_and_dtypes(run_copy):
    eng = RunEngine(run_copy)
    res = sweep(run_copy, engine=eng, options=FAST)
    taps = list(eng.taps)
    n = len(run_probe_set(run_copy))
    width = {t.name: int(t.shape[-1]) for t in eng.extractor.tappable}
    ch = res.channels
    assert ch["mini_epoch"].dtype == np.int32
    assert ch["probe"].dtype == np.int32 and ch["channel"].dtype == np.int32
    assert isinstance(ch["layer"].dtype, pd.CategoricalDtype)
    assert list(ch["layer"].cat.categories) == taps
    assert ch["mini_epoch"].is_monotonic_increasing
    assert len(ch) == 4 * n * sum(width[t] for t in taps)
    for me in range(4):
        at = ch[ch["mini_epoch"] == me]
        assert set(at["layer"].astype(str)) == set(taps)
        for tap in taps:
            rows = at[at["layer"] == tap]  # in table order, not sorted
            c = width[tap]
            np.testing.assert_array_equal(rows["probe"].to_numpy(), np.repeat(np.arange(n), c), err_msg=tap)
            np.testing.assert_array_equal(rows["channel"].to_numpy(), np.tile(np.arange(c), n), err_msg=tap)
    lay = res.layers
    assert list(lay["layer"].cat.categories) == taps and lay["mini_epoch"].dtype == np.int32
    assert len(lay) == 4 * n * len(taps)
    first = lay[lay["mini_epoch"] == 0]
    np.testing.assert_array_equal(first["depth"].to_numpy(), [taps.index(t) for t in first["layer"].astype(str)])


def _segment_of(root: Path, prefix: str, me: int) -> str:
    return _stamp(root, prefix, me)["segment"]


@pytest.mark.parametrize("stream_rows", [1, 1000], ids=["streamed", "held"])
def test_append_column_that_changed_type_starts_a_new_segment(tmp_path, monkeypatch, stream_rows):
    monkeypatch.setattr(sweepcache, "STREAM_ROWS", stream_rows)  # row groups as parts come, or one per segment
    cats = {"t": {"layer": ["a", "b", "c"]}}
    p1 = {"mini_epoch": np.array([0, 0], np.int32), "layer": np.array([0, 2], np.int32),
          "n": np.array([1, 2 ** 40], np.int64), "name": np.array(["x", "y"], object)}
    p2 = {"mini_epoch": np.array([1], np.int32), "layer": np.array([1], np.int32),
          "n": np.array([np.nan]), "name": np.array(["z"], object)}  # NaN cannot become int64
    p3 = {**p2, "mini_epoch": np.array([2], np.int32), "n": np.array([7.0])}  # 7.0 can: same segment as p2
    cache = SegmentCache(tmp_path, cats)
    cache.write([Part(0, "me", ["i0"], {"t": p1, "empty": {}}), Part(1, "me", ["i1"], {"t": p2}),
                 Part(2, "me", ["i2"], {"t": p3})])
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    s0, s1, s2 = (_segment_of(tmp_path, "me", me) for me in range(3))
    assert s0 != s1 == s2
    assert _stamp(tmp_path, "me", 0)["tables"] == ["t"]  # the empty table is not listed
    seg1 = pq.ParquetFile(tmp_path / f"{s1}.t.parquet")
    assert seg1.metadata.num_row_groups == (2 if stream_rows == 1 else 1)
    assert seg1.schema_arrow.field("n").type == "double"
    pd.testing.assert_frame_equal(pq.read_table(tmp_path / f"{s0}.t.parquet").to_pandas(),
                                  to_frame(p1, cats["t"]))
    fresh = SegmentCache(tmp_path, cats)
    r0 = fresh.read(fresh.valid("me", 0, ["i0"]), 0)["t"]
    np.testing.assert_array_equal(r0["layer"], [0, 2])
    assert r0["n"].tolist() == [1, 2 ** 40] and r0["name"].tolist() == ["x", "y"]
    r1, r2 = fresh.read(fresh.valid("me", 1, ["i1"]), 1)["t"], fresh.read(fresh.valid("me", 2, ["i2"]), 2)["t"]
    assert np.isnan(r1["n"]).all() and r1["name"].tolist() == ["z"] and r2["n"].tolist() == [7.0]
    # an int that later comes as an exact float is cast back: one segment, the file's type kept
    cache.write([Part(3, "me", ["i3"], {"t": {**p1, "mini_epoch": np.array([3, 3], np.int32)}}),
                 Part(4, "me", ["i4"], {"t": {**p1, "mini_epoch": np.array([4, 4], np.int32),
                                              "n": np.array([5.0, 6.0])}})])
    assert _segment_of(tmp_path, "me", 3) == _segment_of(tmp_path, "me", 4)
    assert fresh.read(fresh.valid("me", 4, ["i4"]), 4)["t"]["n"].dtype == np.int64


def test_failed_append_leaves_no_segment(tmp_path, monkeypatch):
    cats = {"t": {"layer": ["a", "b"]}, "u": {"layer": ["a", "b"]}}
    cache = SegmentCache(tmp_path, cats)
    cache.append(Part(3, "me", ["id3"], {"t": _cols(3)}))
    real = sweepcache._OpenSegment.write

    def fail_on_u(self, table, t, options):
        if table == "u":
            raise OSError(28, "No space left on device")
        real(self, table, t, options)

    monkeypatch.setattr(sweepcache._OpenSegment, "write", fail_on_u)
    with pytest.raises(OSError):
        cache.append(Part(4, "me", ["id4"], {"t": _cols(4), "u": _cols(4)}))
    cache.finish()  # nothing open any more: no stamp for either checkpoint
    assert list(tmp_path.iterdir()) == []


def test_cache_that_cannot_be_written_is_reported_not_fatal(run_copy, monkeypatch):
    want = sweep(run_copy, options=FAST, use_cache=False)
    shutil.rmtree(run_copy.cache_dir)

    def full(self, part):
        raise OSError(28, "No space left on device", str(self.root))

    monkeypatch.setattr(SegmentCache, "append", full)
    got = sweep(run_copy, options=FAST)
    assert any("could not write the sweep cache" in p and "No space left" in p for p in got.problems)
    for t in ("channels", "layers", "gates", "weights"):
        _assert_table_equal(got.tables[t], want.tables[t], t)
    assert not list(run_copy.cache_dir.rglob("*.json"))


def test_table_buffer_equals_concatenation():
    a = {"x": np.arange(3, dtype=np.int32), "y": np.array([0.5, 1.5, 2.5], np.float32), "s": np.array(list("abc"), object)}
    b = {"x": np.array([7], np.int64), "y": np.array([9.0], np.float32), "s": np.array(["d"], object)}
    buf = sweepcache.TableBuffer(expected_parts=1)  # too small on purpose: it grows
    for part in (a, {}, b, a):
        buf.add("t", part)
    got = buf.columns("t")
    assert got["x"].dtype == np.int64 and got["y"].dtype == np.float32 and got["s"].dtype == object
    for k in a:
        np.testing.assert_array_equal(got[k], np.concatenate([a[k], b[k], a[k]]))
    assert buf.columns("absent") == {} and buf.parts("absent") == []
    assert len(buf.parts("t")) == 1
    # a part with other columns: the table is kept part by part from then on
    buf.add("t", {"x": np.array([1])})
    buf.add("t", a)
    parts = buf.parts("t")
    assert [list(p) for p in parts] == [["x", "y", "s"], ["x"], ["x", "y", "s"]]
    np.testing.assert_array_equal(parts[0]["x"], [0, 1, 2, 7, 0, 1, 2])


FAST_OPTS = SweepOptions(train_mode=False, gradients=False)


def test_result_pickles_without_its_rows_and_reads_them_back(run_copy):
    import pickle

    from core.analysis import sweep as sweep_mod

    res = sweep(run_copy, options=FAST_OPTS)
    blob = pickle.dumps(res)
    assert len(blob) < 200_000  # where the tables are, not their rows
    sweep_mod._LRU.clear()
    back = pickle.loads(blob)
    assert back.mini_epochs == [0, 1, 2, 3]
    for t in ("channels", "layers", "gates", "weights"):
        _assert_table_equal(back.tables[t], res.tables[t], t)


def test_rows_deleted_after_the_sweep_are_computed_again(run_copy):
    from core.analysis import sweep as sweep_mod

    res = sweep(run_copy, options=FAST_OPTS)
    want = sweep(run_copy, options=FAST_OPTS, use_cache=False).tables["layers"]
    sweep_mod._LRU.clear()
    shutil.rmtree(run_copy.cache_dir)
    _assert_table_equal(res.tables["layers"], want, "layers")


def test_shared_table_cache_is_bounded_and_evicts_by_use():
    from core.analysis.sweep import _TableLRU

    df = pd.DataFrame({"x": np.zeros(1000)})  # 8000 bytes + index
    size = int(df.memory_usage(index=True).sum())
    lru = _TableLRU(max_bytes=2 * size + 10)
    lru.put(("a",), df)
    lru.put(("b",), df.copy())
    assert lru.get(("a",)) is df  # "a" used last: "b" goes first
    lru.put(("c",), df.copy())
    assert lru.get(("b",)) is None and lru.get(("a",)) is df and lru.get(("c",)) is not None


def test_cache_link_leaving_the_run_keeps_tables_in_memory(run_copy, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    shutil.rmtree(run_copy.path / "cache", ignore_errors=True)
    (run_copy.path / "cache").symlink_to(target, target_is_directory=True)
    res = sweep(Run(run_copy.path), options=FAST_OPTS)
    assert any("outside the run folder" in p for p in res.problems)
    assert res.mini_epochs == [0, 1, 2, 3] and len(res.tables["layers"])
    assert list(target.iterdir()) == []


def test_some_columns_of_a_table_are_read_alone(run_copy):
    from core.analysis import sweep as sweep_mod

    res = sweep(run_copy, options=FAST_OPTS)
    sweep_mod._LRU.clear()
    fresh = pickle_round_trip(res)
    got = fresh.table("channels", ["mini_epoch", "layer", "channel", "max"])
    assert list(got.columns) == ["mini_epoch", "layer", "channel", "max"]
    assert "channels" not in fresh.tables.loaded()  # the whole table was not read
    want = res.tables["channels"][["mini_epoch", "layer", "channel", "max"]]
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True))


def pickle_round_trip(obj):
    import pickle

    return pickle.loads(pickle.dumps(obj))
