"""Sharded sweeps (--shard I/N, --merge): same tables as one process; --ray without Ray says how to install it."""
from __future__ import annotations

import shutil
import sys

import pandas as pd
import pytest

from core.analysis.raysweep import merge_then_sweep, shard_then_export
from core.analysis.shard import Bundle, Shard, chunks
from core.analysis.sweep import sweep
from core.engine.engine import run_probe_set
from core.run.runs import Run


def _copy(run: Run, folder) -> Run:
    dst = folder / run.name  # same run name: the tables carry it
    shutil.copytree(run.path, dst, ignore=shutil.ignore_patterns("cache"))
    return Run(dst)


def assert_same_tables(a, b) -> None:
    assert set(a.tables) == set(b.tables)
    for name in a.tables:
        pd.testing.assert_frame_equal(a.tables[name], b.tables[name], check_exact=True, obj=name)


def test_shard_parse_and_pick():
    assert Shard.parse("2/5") == Shard(2, 5)
    for bad in ("5/5", "-1/3", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="I/N"):
            Shard.parse(bad)
    ids = list(range(13))
    for n in (1, 2, 3, 5, 13, 20):
        parts = [Shard(i, n).pick(ids) for i in range(n)]
        assert sum(parts, []) == ids  # every checkpoint once, in order
        assert all(p == list(range(p[0], p[-1] + 1)) for p in parts if p)  # contiguous
    assert chunks(ids, 4) == [list(range(0, 3)), list(range(3, 6)), list(range(6, 9)), list(range(9, 13))]


def test_shards_on_separate_copies_merge_to_the_one_process_tables(tiny_run, tmp_path):
    one = _copy(tiny_run, tmp_path / "one")
    expected = sweep(one, run_probe_set(one), use_cache=False)
    target = _copy(tiny_run, tmp_path / "target")
    folders = []
    for i in range(3):  # each shard on its own copy, as on separate machines
        machine = _copy(tiny_run, tmp_path / f"machine{i}")
        shard_then_export(machine, run_probe_set(machine), shard=Shard(i, 3), out=tmp_path / f"shard{i}")
        folders.append(tmp_path / f"shard{i}")
    stamps = sum(len(Bundle.read(f).stamps) for f in folders)
    assert stamps == 2 * len(tiny_run.checkpoints())  # activation + weight entries of every checkpoint
    merged = merge_then_sweep(target, run_probe_set(target), folders=folders)
    assert_same_tables(expected, merged)
    assert not merged.problems


def test_merge_refuses_a_missing_or_foreign_folder(tiny_run, tmp_path, capsys):
    from core.__main__ import main

    run = _copy(tiny_run, tmp_path / "r")
    (tmp_path / "empty").mkdir()
    assert main(["sweep", str(run.path), "--merge", str(tmp_path / "empty")]) == 2
    assert "no bundle.json" in capsys.readouterr().err


def test_ray_flag_without_ray_says_how_to_install(tiny_run, tmp_path, monkeypatch, capsys):
    from core.__main__ import main

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, as without the extra
    run = _copy(tiny_run, tmp_path / "r")
    assert main(["sweep", str(run.path), "--ray"]) == 2
    err = capsys.readouterr().err
    assert "requirements-cloud.txt" in err and "Traceback" not in err
