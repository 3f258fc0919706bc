"""Runs on a real S3-compatible server (moto on 127.0.0.1): opened, swept, diagnosed, rendered; clear errors."""
from __future__ import annotations

import pandas as pd
import pytest

from tests.cloud.conftest import BUCKET, needs, upload_run

needs("fsspec", "s3fs", "moto")


@pytest.fixture(scope="module")
def uploaded(s3_server, tiny_run):
    """The session's tiny run, uploaded as s3://BUCKET/runs/tiny (manifest last)."""
    upload_run(s3_server, tiny_run.path, "runs/tiny")
    return f"s3://{BUCKET}/runs/tiny"


def test_cli_sweeps_and_diagnoses_a_run_on_s3(uploaded, s3_env, tiny_run, tmp_path, capsys):
    from core.__main__ import main
    from core.analysis.sweep import sweep
    from core.engine.engine import run_probe_set
    from core.run.remote import mirror

    assert main(["sweep", uploaded]) == 0
    assert main(["diagnose", "tiny", "--runs-root", f"s3://{BUCKET}/runs"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out
    assert main(["export", uploaded, "--out", str(tmp_path / "csv"), "--tables", "layers"]) == 0
    local = mirror(uploaded).local
    assert str(local).startswith(str(tmp_path / "mirrors"))  # the cache lives in the local mirror
    assert list((local / "cache").iterdir())
    # the tables equal those of the same run read from a local folder
    ref = sweep(tiny_run, run_probe_set(tiny_run))
    got = pd.read_csv(tmp_path / "csv" / "tiny.layers.csv")
    assert len(got) == len(ref.layers)
    s3 = s3_env.client()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="runs/tiny/")["Contents"]]
    assert not [k for k in keys if "/cache/" in k]  # nothing was written to the bucket


def test_mirror_fetches_only_what_changed(uploaded, s3_env):
    from core.run.remote import mirror

    m = mirror(uploaded)
    run = m.sync()
    before = {c.mini_epoch: c.mtime_ns for c in run.checkpoints()}
    assert sorted(before) == [0, 1, 2, 3]
    run = m.sync()  # nothing changed remotely: no file is fetched again
    assert {c.mini_epoch: c.mtime_ns for c in run.checkpoints()} == before


def test_app_renders_a_run_on_s3(uploaded, s3_env, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from core.run.remote import mirror
    from tests.pages.conftest import REPO

    monkeypatch.setenv("ADE_RUNS_ROOT", f"s3://{BUCKET}/runs")
    monkeypatch.chdir(REPO)
    at = AppTest.from_file(str(REPO / "explorer.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.message for e in at.exception]
    thread = mirror(uploaded)._thread
    if thread is not None:
        thread.join(timeout=120)  # checkpoints arrive in the background; wait for that condition
    for page in ("overview", "dynamics", "gates"):
        at.switch_page(f"pages/{page}.py").run()
        assert not at.exception, (page, [(e.message, e.stack_trace[-6:]) for e in at.exception])
        assert at.title[0].value
    assert len(at.get("vega_lite_chart")) >= 1


def _cli_error(argv, capsys) -> str:
    from core.__main__ import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_bad_credentials_say_so(uploaded, s3_env, monkeypatch, capsys):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGKEY")
    err = _cli_error(["sweep", uploaded, "--fast"], capsys)
    assert "access denied" in err and "credentials" in err


def test_missing_bucket_says_so(s3_env, capsys):
    err = _cli_error(["sweep", "s3://no-such-bucket-here/runs/tiny", "--fast"], capsys)
    assert "not found" in err and "bucket" in err


def test_half_uploaded_runs_say_what_is_missing(s3_env, tiny_run, capsys):
    upload_run(s3_env, tiny_run.path, "half/no-manifest", skip=("manifest.json",))
    err = _cli_error(["sweep", f"s3://{BUCKET}/half/no-manifest", "--fast"], capsys)
    assert "incomplete run" in err and "manifest.json" in err
    upload_run(s3_env, tiny_run.path, "half/no-model", skip=("model.keras",))
    err = _cli_error(["sweep", f"s3://{BUCKET}/half/no-model", "--fast"], capsys)
    assert "incomplete run" in err and "model.keras" in err
    err = _cli_error(["sweep", f"s3://{BUCKET}/half/nothing-here", "--fast"], capsys)
    assert "no run here" in err


def test_app_lists_half_uploaded_and_unreadable_roots_clearly(s3_env, tiny_run, monkeypatch):
    from core.run.remote import list_remote_runs

    upload_run(s3_env, tiny_run.path, "listing/ok")
    upload_run(s3_env, tiny_run.path, "listing/partial", skip=("manifest.json",))
    infos = {i.name: i for i in list_remote_runs(f"s3://{BUCKET}/listing")}
    assert infos["ok"].error is None and infos["ok"].n_checkpoints == 4
    assert "incomplete run" in infos["partial"].error


def test_import_a_checkpoint_folder_from_s3_then_sweep(s3_env, tmp_path, capsys):
    """A foreign ModelCheckpoint folder uploaded to the bucket is imported (from a local copy) and swept."""
    import keras
    import numpy as np

    from core.__main__ import main

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    out = keras.layers.Dense(3, activation="softmax", name="head")(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, out)
    model.compile("adam", "sparse_categorical_crossentropy")
    folder = tmp_path / "foreign"
    x = np.random.default_rng(0).random((32, 12, 12, 3)).astype("float32")
    model.fit(x, np.arange(32) % 3, epochs=3, verbose=0,
              callbacks=[keras.callbacks.ModelCheckpoint(str(folder / "ckpt_{epoch}.keras"))])
    s3 = s3_env.client()
    for p in sorted(folder.iterdir()):
        s3.upload_file(str(p), BUCKET, f"foreign/ckpts/{p.name}")
    from PIL import Image

    probe = tmp_path / "probe.png"
    Image.fromarray((x[0] * 255).astype(np.uint8)).save(probe)
    root = tmp_path / "runs"
    assert main(["import", f"s3://{BUCKET}/foreign/ckpts", "--name", "imported", "--runs-root", str(root),
                 "--probes", str(probe)]) == 0
    assert main(["sweep", str(root / "imported"), "--fast"]) == 0
    assert "3 checkpoints" in capsys.readouterr().out
