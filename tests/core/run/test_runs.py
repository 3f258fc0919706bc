"""Run directory reading and validation: manifest, checkpoints, history, probes, safety."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from core.run.runs import (HISTORY_COLUMNS, Run, RunError, RunWriter, list_runs, make_manifest, open_run,
                       parse_history, resolve_run_path)


def _weights(k: float) -> dict[str, np.ndarray]:
    return {"conv/kernel": np.full((3, 3, 1, 2), k, np.float32), "conv/bias": np.full((2,), k, np.float32)}


def _make_run(root, name="r", n=3) -> Run:
    w = RunWriter(root / name)
    w.create(make_manifest(name, (8, 8, 1), preprocessing={"kind": "scale01"}, class_names=["a", "b"],
                           mini_epoch_images=100),
             probes=(np.zeros((4, 8, 8, 1), np.uint8), np.array([0, 1, 0, 1])))
    for k in range(n + 1):
        w.write_checkpoint(k, _weights(k))
        if k:
            w.append_history({"mini_epoch": k, "images_seen": 100 * k, "wall_time": k, "loss": 1 / k,
                              "accuracy": 0.1 * k, "val_loss": 1.0, "val_accuracy": 0.5, "lr": 1e-3})
    return Run(root / name)


def test_round_trip(tmp_path):
    run = _make_run(tmp_path, n=3)
    assert run.manifest.input_shape == (8, 8, 1)
    assert run.manifest.class_names == ("a", "b")
    assert [c.mini_epoch for c in run.checkpoints()] == [0, 1, 2, 3]
    h = run.history()
    assert list(h["mini_epoch"]) == [1, 2, 3]
    assert list(h.columns[:len(HISTORY_COLUMNS)]) == list(HISTORY_COLUMNS)
    np.testing.assert_array_equal(run.read_weights(2)["conv/bias"], [2, 2])
    x, y = run.probes()
    assert x.shape == (4, 8, 8, 1) and y.dtype == np.int64
    assert run.problems == []
    assert run.complete_mini_epochs() == [0, 1, 2, 3]


def test_torn_last_history_row_is_ignored(tmp_path):
    run = _make_run(tmp_path, n=3)
    p = run.path / "history.csv"
    p.write_text(p.read_text() + "4,400,4.0,0.2")  # the writer was killed mid-line
    h = run.history()
    assert list(h["mini_epoch"]) == [1, 2, 3]
    assert any("torn last row" in pr for pr in run.problems)


def test_malformed_middle_row_reported(tmp_path):
    text = ",".join(HISTORY_COLUMNS) + "\n1,10,1,1,0,1,0,0.1\nxx,yy\n2,20,2,1,0,1,0,0.1\n"
    df, problems = parse_history(text, tmp_path / "history.csv")
    assert list(df["mini_epoch"]) == [1, 2]
    assert len(problems) == 1 and "line 3" in problems[0] and "malformed" in problems[0]


def test_duplicate_history_rows_keep_last(tmp_path):
    text = ",".join(HISTORY_COLUMNS) + "\n1,10,1,5,0,1,0,0.1\n1,10,1,3,0,1,0,0.1\n"
    df, problems = parse_history(text, tmp_path / "history.csv")
    assert df["loss"].tolist() == [3.0] and "duplicate" in problems[0]


def test_missing_checkpoint_reported_rest_usable(tmp_path):
    run = _make_run(tmp_path, n=4)
    (run.path / "checkpoints" / "ckpt_000002.npz").unlink()
    assert [c.mini_epoch for c in run.checkpoints()] == [0, 1, 3, 4]
    assert any("missing for mini-epochs 2" in p and "checkpoints" in p for p in run.problems)
    np.testing.assert_array_equal(run.read_weights(3)["conv/bias"], [3, 3])


def test_truncated_checkpoint_names_the_file(tmp_path):
    run = _make_run(tmp_path, n=2)
    p = run.path / "checkpoints" / "ckpt_000001.npz"
    p.write_bytes(p.read_bytes()[:50])
    with pytest.raises(RunError) as e:
        run.read_weights(1)
    assert "ckpt_000001.npz" in str(e.value) and "truncated" in str(e.value)
    np.testing.assert_array_equal(run.read_weights(2)["conv/bias"], [2, 2])


def test_empty_checkpoint_ignored(tmp_path):
    run = _make_run(tmp_path, n=2)
    (run.path / "checkpoints" / "ckpt_000003.npz").write_bytes(b"")
    assert [c.mini_epoch for c in run.checkpoints()] == [0, 1, 2]
    assert any("empty checkpoint" in p for p in run.problems)


@pytest.mark.parametrize("content, fragment", [
    (None, "missing"),
    ("{not json", "not valid JSON"),
    ('{"format": "something-else"}', "not a run manifest"),
    ('{"format": "activation-dynamics-run", "format_version": 99, "input": {}}', "newer than this app"),
    ('{"format": "activation-dynamics-run", "format_version": 1}', "lacks the field 'input'"),
    ('{"format": "activation-dynamics-run", "format_version": 1, "input": {"height": "x"}}', "'input.height' must be an integer"),
])
def test_bad_manifest_messages(tmp_path, content, fragment):
    d = tmp_path / "bad"
    d.mkdir()
    if content is not None:
        (d / "manifest.json").write_text(content)
    with pytest.raises(RunError) as e:
        _ = Run(d).manifest
    assert fragment in str(e.value) and "manifest.json" in str(e.value)


def test_list_runs_marks_broken_runs_and_keeps_good_ones(tmp_path):
    _make_run(tmp_path, "good", n=1)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{")
    (tmp_path / "not-a-run").mkdir()
    infos = {i.name: i for i in list_runs(tmp_path)}
    assert set(infos) == {"good", "broken"}
    assert infos["good"].error is None and infos["good"].n_checkpoints == 2
    assert "not valid JSON" in infos["broken"].error


@pytest.mark.parametrize("name", ["../etc", "..", "/etc/passwd", "a/b", ".hidden", "", "x" * 200, "a\\..\\b"])
def test_run_names_cannot_escape_root(tmp_path, name):
    with pytest.raises(RunError):
        resolve_run_path(tmp_path, name)


def test_symlink_escaping_root_refused(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside"
    _make_run(tmp_path, "outside", n=1)
    os.symlink(outside / "checkpoints", root / "link")
    with pytest.raises(RunError):
        open_run(root, "link")


def test_empty_run_is_usable(tmp_path):
    w = RunWriter(tmp_path / "empty")
    w.create(make_manifest("empty", (4, 4, 3), preprocessing={"kind": "none"}))
    run = Run(tmp_path / "empty")
    assert run.checkpoints() == [] and run.history().empty and run.probes()[0].shape == (0, 4, 4, 3)


def test_truncate_after_for_resume(tmp_path):
    run = _make_run(tmp_path, n=4)
    RunWriter(run.path).truncate_after(2)
    assert [c.mini_epoch for c in run.checkpoints()] == [0, 1, 2]
    assert list(run.history()["mini_epoch"]) == [1, 2]


def test_complete_mini_epochs_excludes_checkpoint_without_row(tmp_path):
    run = _make_run(tmp_path, n=2)
    RunWriter(run.path).write_checkpoint(3, _weights(3))  # killed before the history row
    assert run.complete_mini_epochs() == [0, 1, 2]


def test_probe_shape_mismatch(tmp_path):
    run = _make_run(tmp_path, n=1)
    np.savez(run.path / "probes.npz", x=np.zeros((2, 5, 5, 1), np.uint8), y=np.zeros(2))
    with pytest.raises(RunError, match="probes.npz"):
        run.probes()


def test_pickled_probe_file_refused(tmp_path):
    run = _make_run(tmp_path, n=1)
    np.savez(run.path / "probes.npz", x=np.array([object()], dtype=object), y=np.zeros(1))
    with pytest.raises(RunError, match="probes.npz"):
        run.probes()
