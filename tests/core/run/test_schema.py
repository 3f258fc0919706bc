"""The run schema in one place: poisoned manifest fields, invalid history values, links leaving the run, npz bombs."""
from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pandas as pd
import pytest

from core.run.npzfile import NpzError, members, read_npz
from core.run.runs import Run, RunError, RunWriter, list_runs, make_manifest
from core.run.schema import HISTORY_COLUMNS, parse_history

POISON = {
    "external_checkpoints": [{"foo": 1}],
    "mini_epoch_images": "lots",
    "input": {"preprocessing": "scale01"},
    "training": [1, 2, 3],
}


def _make(root, name="good"):
    w = RunWriter(root / name)
    w.create(make_manifest(name, (8, 8, 1), preprocessing={"kind": "scale01"}, mini_epoch_images=100),
             probes=(np.zeros((2, 8, 8, 1), np.uint8), np.array([0, 1])))
    for k in range(3):
        w.write_checkpoint(k, {"conv/kernel": np.full((3, 3, 1, 2), k, np.float32)})
        if k:
            w.append_history({"mini_epoch": k, "images_seen": 100 * k, "loss": 1.0 / k})
    return Run(root / name)


def _poison(run: Run, field: str) -> None:
    m = json.loads((run.path / "manifest.json").read_text())
    m[field] = POISON[field] if field != "input" else {**m["input"], **POISON["input"]}
    (run.path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("field", list(POISON))
def test_poisoned_field_is_named_and_other_runs_keep_working(tmp_path, field):
    _make(tmp_path, "a-good")
    bad = _make(tmp_path, "b-bad")
    _make(tmp_path, "c-good")
    _poison(bad, field)
    with pytest.raises(RunError) as e:
        _ = Run(bad.path).manifest
    assert "manifest.json" in str(e.value) and field in str(e.value)
    infos = {i.name: i for i in list_runs(tmp_path)}
    assert infos["a-good"].error is None and infos["c-good"].error is None
    assert infos["a-good"].n_checkpoints == 3
    assert infos["b-bad"].error and field in infos["b-bad"].error


@pytest.mark.parametrize("value", ["/etc/passwd", "../other/model.keras", "..\\model.keras"])
def test_architecture_file_outside_the_run_is_refused(tmp_path, value):
    run = _make(tmp_path)
    m = json.loads((run.path / "manifest.json").read_text())
    m["architecture_file"] = value
    (run.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(RunError, match="architecture_file"):
        _ = Run(run.path).architecture_path


@pytest.mark.parametrize("bad, why", [("1e300", "not a whole number"), ("3.7", "not a whole number"),
                                      ("-1", "not a whole number"), ("nan", "not a whole number")])
def test_invalid_mini_epoch_is_reported_and_skipped_never_coerced(tmp_path, bad, why):
    text = ",".join(HISTORY_COLUMNS) + f"\n1,10,1,1,0,1,0,0.1\n3,30,3,1,0,1,0,0.1\n{bad},99,9,9,0,1,0,0.1\n"
    df, problems = parse_history(text, tmp_path / "history.csv")
    assert df["mini_epoch"].tolist() == [1, 3] and df["loss"].tolist() == [1.0, 1.0]
    assert len(problems) == 1 and "line 4" in problems[0] and why in problems[0]


def test_fractional_images_seen_is_skipped(tmp_path):
    text = ",".join(HISTORY_COLUMNS) + "\n1,10.5,1,1,0,1,0,0.1\n2,20,2,1,0,1,0,0.1\n"
    df, problems = parse_history(text, tmp_path / "history.csv")
    assert df["mini_epoch"].tolist() == [2] and "images_seen" in problems[0]


def test_bad_history_header_is_a_problem_for_readers_and_an_error_for_writers(tmp_path):
    run = _make(tmp_path)
    p = run.path / "history.csv"
    p.write_text("garbage,header\n1,2\n")
    hist = run.history()
    assert hist.empty and any("history.csv" in x and "mini_epoch" in x for x in run.problems)
    with pytest.raises(RunError, match="history.csv"):
        RunWriter(run.path).append_history({"mini_epoch": 3, "images_seen": 300})
    assert p.read_text() == "garbage,header\n1,2\n"


@pytest.mark.parametrize("name", ["history.csv", "manifest.json", "probes.npz", "model.keras"])
def test_links_leaving_the_run_are_refused(tmp_path, name):
    run = _make(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.csv"
    secret.write_text("mini_epoch,images_seen\n1,123456\n")
    target = run.path / name
    target.unlink(missing_ok=True)
    target.symlink_to(secret)
    r = Run(run.path)
    if name == "history.csv":
        assert r.history().empty and any("outside the run folder" in p for p in r.problems)
        with pytest.raises(RunError, match="outside the run folder"):
            RunWriter(run.path).write_history(pd.DataFrame({"mini_epoch": [1]}))
    elif name == "manifest.json":
        with pytest.raises(RunError, match="outside the run folder"):
            _ = r.manifest
    elif name == "probes.npz":
        with pytest.raises(RunError, match="outside the run folder"):
            r.probes()
    else:
        with pytest.raises(RunError, match="outside the run folder"):
            _ = r.architecture_path
    assert secret.read_text() == "mini_epoch,images_seen\n1,123456\n"


def test_cache_link_leaving_the_run_is_refused(tmp_path):
    run = _make(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run.path / "cache").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(RunError, match="outside the run folder"):
        _ = Run(run.path).cache_dir


def test_checkpoint_link_leaving_the_run_is_ignored_and_reported(tmp_path):
    run = _make(tmp_path)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    (run.path / "checkpoints" / "ckpt_000003.npz").symlink_to(foreign)
    r = Run(run.path)
    assert [c.mini_epoch for c in r.checkpoints()] == [0, 1, 2]
    assert any("ckpt_000003.npz" in p and "outside" in p for p in r.problems)


def _bomb(path, declared=(2 ** 28,), dtype="<f8") -> None:
    """A deflated npz member declaring ``declared`` (2 GiB by default) whose data are zeros."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": dtype, "fortran_order": False, "shape": declared})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            chunk = bytes(2 ** 22)
            for _ in range(4):  # 16 MB of zeros: enough to show the ratio, cheap to write
                f.write(chunk)


def test_npz_bomb_refused_from_its_header(tmp_path):
    p = tmp_path / "bomb.npz"
    _bomb(p)
    assert os.path.getsize(p) < 1_000_000
    with pytest.raises(NpzError, match="decompression bomb"):
        members(p)
    with pytest.raises(NpzError):
        read_npz(p)


def test_npz_bomb_checkpoint_and_probes_give_run_errors(tmp_path):
    run = _make(tmp_path)
    _bomb(run.path / "checkpoints" / "ckpt_000002.npz")
    _bomb(run.path / "probes.npz", declared=(2 ** 20, 8, 8, 1), dtype="|u1")
    with pytest.raises(RunError, match="ckpt_000002.npz"):
        run.read_weights(2)
    with pytest.raises(RunError, match="probes.npz"):
        run.probes()


def test_probe_set_shape_checked_before_reading(tmp_path):
    run = _make(tmp_path)
    np.savez(run.path / "probes.npz", x=np.zeros((2, 9, 9, 1), np.uint8), y=np.zeros(2, np.int64))
    with pytest.raises(RunError, match=r"declares shape \(2, 9, 9, 1\)"):
        run.probes()


def test_our_own_files_pass_the_checks(tmp_path):
    run = _make(tmp_path)
    assert set(members(run.path / "checkpoints" / "ckpt_000001.npz")) == {"conv/kernel"}
    np.testing.assert_array_equal(run.read_weights(1)["conv/kernel"], np.ones((3, 3, 1, 2), np.float32))
