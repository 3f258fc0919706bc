"""Train page (AppTest): start a tiny training, follow it live, refuse a second one, cancel and resume."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.training import jobs
from core.run.runs import Run

REPO = Path(__file__).resolve().parents[2]
TINY = {"train_input_size": 32, "train_num_classes": 5, "train_stem_width": 8, "train_widths": "8,8,8",
        "train_convs": "1,1,1", "train_residual": "2", "train_se_blocks": "1,2,3", "train_dense": "16,16",
        "train_images": 256, "train_val_images": 16, "train_probe_images": 4, "train_batch_size": 32,
        "train_mini_epoch_images": 64, "train_mini_epochs": 4, "train_lr": 0.002}


@pytest.fixture
def roots(tmp_path, monkeypatch):
    runs, data = tmp_path / "runs", tmp_path / "datasets"
    runs.mkdir()
    data.mkdir()
    monkeypatch.setenv("ADE_RUNS_ROOT", str(runs))
    monkeypatch.setenv("ADE_DATA_ROOT", str(data))
    monkeypatch.chdir(REPO)
    yield runs, data
    holder = jobs.lock_holder(runs)  # never leave a training behind
    if holder is not None and holder.pid:
        os.kill(holder.pid, signal.SIGKILL)


def _app() -> AppTest:
    at = AppTest.from_file(str(REPO / "pages" / "train.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def _fill(at: AppTest, name: str, **values) -> None:
    at.text_input(key="train_name").set_value(name)
    for key, v in {**TINY, **values}.items():
        (at.text_input(key=key) if isinstance(v, str) else at.number_input(key=key)).set_value(v)


def _start(at: AppTest, name: str, **values) -> AppTest:
    _fill(at, name, **values)
    at.button(key="train_start").click()
    at.run()
    assert not at.exception, at.exception
    return at


def _poll(at: AppTest, until, timeout: float = 90.0) -> bool:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        at.run()
        assert not at.exception, at.exception
        if until(at):
            return True
        time.sleep(1.0)
    return False


def _progress_value(at: AppTest) -> float:
    bars = at.get("progress")
    return float(bars[0].value) if bars else 0.0


def _state(at: AppTest) -> str:
    return next((m.value for m in at.metric if m.label == "State"), "")


@pytest.mark.slow
def test_start_follow_refuse_cancel_resume(roots):
    runs, _ = roots
    # long enough to be cancelled mid-way: 30 tiny mini-epochs could end within one 1 s poll interval
    at = _start(_app(), "tiny-1", train_mini_epochs=1000)
    assert any("started" in s.value for s in at.success), [e.value for e in at.error]
    run_dir = runs / "tiny-1"

    # A second training while the first runs is refused with a clear message.
    at = _start(at, "tiny-2")
    assert any("already running" in e.value for e in at.error), [e.value for e in at.error]
    assert not (runs / "tiny-2").exists()

    # Progress and checkpoints show up while it trains.
    assert _poll(at, lambda a: _progress_value(a) > 0 and (run_dir / "manifest.json").exists()
                 and len(Run(run_dir).complete_mini_epochs()) >= 3), jobs.log_tail(run_dir)
    assert _state(at) == "running"
    assert at.get("vega_lite_chart") or at.get("arrow_vega_lite_chart")

    # Cancel: the process stops after the current batch and keeps its complete checkpoints.
    at.button(key="train_cancel").click()
    at.run()
    assert _poll(at, lambda a: _state(a) == "cancelled", timeout=60), jobs.log_tail(run_dir)
    done = Run(run_dir).complete_mini_epochs()[-1]
    assert 2 <= done < 1000
    said = " ".join(i.value for i in at.info)
    assert f"Cancelled after {jobs.status(run_dir).images_done:,} images" in said, said
    assert f"last complete checkpoint, mini-epoch {done}" in said, said

    # Resume to two more mini-epochs than were complete.
    at.number_input(key="train_resume_total:tiny-1").set_value(done + 2)
    at.button(key="train_resume").click()
    at.run()
    assert not at.exception, at.exception
    assert _poll(at, lambda a: _state(a) == "done", timeout=120), jobs.log_tail(run_dir)
    run = Run(run_dir)
    assert run.history()["mini_epoch"].tolist() == list(range(1, done + 3))
    assert [c.mini_epoch for c in run.checkpoints()] == list(range(done + 3))
    assert _progress_value(at) == pytest.approx(100)  # the element holds percent
    assert jobs.lock_holder(runs) is None


def test_bad_config_and_outside_folders_are_refused(roots):
    runs, data = roots
    at = _start(_app(), "bad", train_widths="8,8,8", train_se_blocks="1,2,3,4")
    assert any("out of range" in e.value for e in at.error)
    assert jobs.lock_holder(runs) is None and not (runs / "bad").exists()
    at = _start(at, "../escape")
    assert any("not a valid run name" in e.value for e in at.error)
    with pytest.raises(jobs.JobError, match="outside the data root"):
        jobs.resolve_dataset(data, "../../etc")
    with pytest.raises(jobs.JobError, match="outside the data root"):
        jobs.resolve_dataset(data, "/etc")
    (data / "shapes" / "a").mkdir(parents=True)
    assert jobs.resolve_dataset(data, "shapes") == (data / "shapes").resolve()
    assert jobs.list_datasets(data) == ["shapes"]


# -- core.training.jobs logic behind the page (no training process needed) ---------------------------
def test_combine_status_states():
    running = {"state": "running", "pid": 11, "images_done": 64, "images_total": 256, "mini_epoch": 1,
               "mini_epochs": 4, "images_per_s": 50.0, "eta_s": 4.0}
    job = {"pid": 11, "config": {"mini_epochs": 4}}
    s = jobs.combine_status(running, job, alive=True)
    assert (s.state, s.fraction, s.active, s.can_resume) == ("running", 0.25, True, False)
    assert jobs.combine_status(running, job, alive=False).state == "died"  # killed: never said goodbye
    assert jobs.combine_status(running, {**job, "cancel_requested": True}, alive=False).state == "cancelled"
    assert jobs.combine_status({**running, "state": "done", "mini_epoch": 4}, job, alive=False).state == "done"
    assert jobs.combine_status(None, job, alive=True).state == "starting"
    stopping = jobs.combine_status({**running, "state": "stopping"}, job, alive=True)
    assert (stopping.state, stopping.active) == ("stopping", True)  # a cancel seen: ends after this batch
    # A resumed job (new pid) does not inherit the old process's final state.
    old = {**running, "state": "done", "pid": 5}
    assert jobs.combine_status(old, {**job, "pid": 12}, alive=True).state == "starting"
    assert jobs.combine_status(None, {}, alive=False).state == "none"
    failed = jobs.combine_status({**running, "state": "failed", "error": "boom"}, job, alive=False)
    assert failed.can_resume and failed.error == "boom"


def test_lock_refuses_a_second_training(tmp_path):
    from core.training.trainer import TrainConfig

    fd = jobs._try_lock(tmp_path)  # as a running training would hold it
    try:
        os.pwrite(fd, b'{"pid": 4242, "run": "other", "started": 0}', 0)
        assert jobs._try_lock(tmp_path) is None
        assert jobs.lock_holder(tmp_path) == jobs.Holder(4242, "other", 0)
        with pytest.raises(jobs.Busy, match="already running .*'other'"):
            jobs.start(tmp_path, "mine", TrainConfig())
        assert not (tmp_path / "mine" / "job.json").exists()
    finally:
        os.close(fd)
    assert jobs.lock_holder(tmp_path) is None  # released with its holder


# -- issue 17.1: the resume total belongs to the run followed -------------------------------------------------
def _finished_job(runs: Path, src: Path, name: str, planned: int, state: str) -> Path:
    """A copy of ``src`` (3 complete mini-epochs) whose job planned ``planned`` and ended in ``state``."""
    import json
    import shutil

    from core.training.trainer import STATUS, TrainConfig

    d = runs / name
    shutil.copytree(src, d, ignore=shutil.ignore_patterns("cache"))
    cfg = TrainConfig.from_dict(Run(d).manifest.training).to_dict() | {"mini_epochs": planned}
    (d / jobs.JOB).write_text(json.dumps({"config": cfg, "pid": None, "cancel_requested": state == "cancelled"}))
    per_me = 128
    (d / STATUS).write_text(json.dumps({"state": state, "pid": None, "mini_epoch": 3, "mini_epochs": planned,
                                        "images_done": 3 * per_me, "images_total": planned * per_me}))
    return d


def test_resume_total_follows_the_run_and_never_goes_below_what_is_done(roots, runs_root):
    runs, _ = roots
    _finished_job(runs, runs_root / "tiny", "a-done", 3, "done")
    b = _finished_job(runs, runs_root / "tiny", "b-cancelled", 20, "cancelled")
    at = _app()
    at.selectbox(key="train_follow_pick").set_value("a-done").run()
    total = next(n for n in at.number_input if n.label == "Mini-epochs in total")
    assert total.value == 3
    at.selectbox(key="train_follow_pick").set_value("b-cancelled").run()
    total = next(n for n in at.number_input if n.label == "Mini-epochs in total")
    assert total.value == 20  # B's plan, not the 3 shown for A

    # a total at or below the complete mini-epochs is refused with what to do, and nothing starts
    total.set_value(3)
    at.button(key="train_resume").click()
    at.run()
    assert any("already has 3 complete mini-epochs" in e.value for e in at.error), [e.value for e in at.error]
    assert jobs.lock_holder(runs) is None and jobs.status(b).state == "cancelled"
    with pytest.raises(jobs.JobError, match="more than 3"):
        jobs.resume(b, mini_epochs=2)


def test_starting_phase_says_what_it_does(roots):
    """Issue 17.9: ~10 s at "starting · 0 / 0 images" said nothing useful; no ETA before a mini-epoch ends."""
    import json
    import subprocess
    import sys

    runs, _ = roots
    d = runs / "warming-up"
    d.mkdir()
    # a live process that looks like a training job (its command line names core) and has said nothing yet
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "core"])
    try:
        (d / jobs.JOB).write_text(json.dumps({"config": {"mini_epochs": 20}, "pid": proc.pid}))
        at = AppTest.from_file(str(REPO / "pages" / "train.py"), default_timeout=60)
        at.session_state["train_follow"] = "warming-up"
        at.run()
        assert not at.exception, at.exception
        assert _state(at) == "starting"
        text = at.get("progress")[0].proto.text
        assert "imports TensorFlow" in text and "mini-epoch 1 of 20" in text, text
        assert next(m.value for m in at.metric if m.label == "ETA") == "–"
    finally:
        proc.kill()
        proc.wait()
