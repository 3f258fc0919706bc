"""One poisoned run among good ones: it is listed as damaged with the reason, every page keeps working
for the others; a damaged or linked history is reported (app, report, diagnose, sweep), never raised."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.conftest import assert_no_exception, copy_tiny, messages, new_app
from ui import pages_registry

POISON = {
    "p-external": ("external_checkpoints", [{"foo": 1}]),
    "p-mie": ("mini_epoch_images", "lots"),
    "p-pre": ("input", "scale01"),  # input.preprocessing a string instead of an object
    "p-training": ("training", [1, 2, 3]),
}
PAGES = [p.name for p in pages_registry.PAGES]
SECRET = "mini_epoch,images_seen,loss\n1,424242,0.123\n"


@pytest.fixture(scope="module")
def poisoned_root(tmp_path_factory, tiny_run) -> Path:
    root = tmp_path_factory.mktemp("poisoned")
    copy_tiny(tiny_run.path, root / "a-good")
    for name, (field, value) in POISON.items():
        d = copy_tiny(tiny_run.path, root / name)
        m = json.loads((d / "manifest.json").read_text())
        if field == "input":
            m["input"]["preprocessing"] = value
        else:
            m[field] = value
        (d / "manifest.json").write_text(json.dumps(m))
    d = copy_tiny(tiny_run.path, root / "h-header")
    lines = (d / "history.csv").read_text().splitlines()
    (d / "history.csv").write_text("\n".join(["garbage;header", *lines[1:]]) + "\n")
    d = copy_tiny(tiny_run.path, root / "h-linked")
    (root.parent / "outside.csv").write_text(SECRET)
    (d / "history.csv").unlink()
    (d / "history.csv").symlink_to(root.parent / "outside.csv")
    return root


def test_listing_marks_each_poisoned_run_with_its_field(poisoned_root):
    from core.run.runs import list_runs

    infos = {i.name: i for i in list_runs(poisoned_root)}
    assert infos["a-good"].error is None and infos["a-good"].n_checkpoints == 4
    for name, (field, _) in POISON.items():
        assert infos[name].error and "manifest.json" in infos[name].error and field in infos[name].error


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_every_page_works_for_a_good_run_beside_poisoned_ones(poisoned_root, monkeypatch, page):
    monkeypatch.setenv("ADE_RUNS_ROOT", str(poisoned_root))
    at = new_app(run="a-good", page=page)
    at.run()
    assert_no_exception(at, f"a-good on {page}")
    if page in ("compare", "train"):  # they pick runs their own way; rendering without an exception is the point
        return
    picker = next(s for s in at.sidebar.selectbox if s.label == "Run")
    opts = [str(o) for o in picker.options]
    assert all(any(o.startswith(name) and "⚠" in o for o in opts) for name in POISON), opts  # marked damaged
    assert any(o.strip() == "a-good" for o in opts), opts


@pytest.mark.slow
@pytest.mark.parametrize("name", list(POISON))
def test_selecting_a_poisoned_run_names_the_field(poisoned_root, monkeypatch, name):
    monkeypatch.setenv("ADE_RUNS_ROOT", str(poisoned_root))
    at = new_app(run=name, page="overview")
    at.run()
    assert_no_exception(at, f"{name} on overview")
    msgs = messages(at)
    assert any("manifest.json" in m and POISON[name][0] in m for m in msgs), msgs


@pytest.mark.slow
@pytest.mark.parametrize("name, needle", [("h-header", "mini_epoch"), ("h-linked", "outside the run folder")])
def test_damaged_history_is_reported_on_the_overview(poisoned_root, monkeypatch, name, needle):
    monkeypatch.setenv("ADE_RUNS_ROOT", str(poisoned_root))
    at = new_app(run=name, page="overview")
    at.run()
    assert_no_exception(at, f"{name} on overview")
    everything = messages(at) + [str(c.value) for c in at.get("caption")] + [str(m.value) for m in at.markdown]
    assert any("history.csv" in m and needle in m for m in everything), everything
    assert not any("424242" in m for m in everything)


@pytest.mark.parametrize("name, needle", [("h-header", "mini_epoch"), ("h-linked", "outside the run folder")])
def test_report_diagnose_and_sweep_warn_about_the_history(poisoned_root, tmp_path, capsys, name, needle):
    from core.__main__ import main

    out = tmp_path / "r.html"
    assert main(["report", name, "--runs-root", str(poisoned_root), "--out", str(out), "--fast"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "424242" not in out.read_text()
    for cmd in (["diagnose"], ["sweep"]):
        assert main([*cmd, name, "--runs-root", str(poisoned_root), "--fast"]) == 0
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert any(line.startswith("warning:") and "history.csv" in line and needle in line
                   for line in err.splitlines()), err
