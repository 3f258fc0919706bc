"""AppTest of the views that answer "is it shrinking, where, since when, why": the ranked scale table, the
findings' "Why?", distributions over training, the filmstrip and the SE excitation scale."""
from __future__ import annotations

from tests.pages.conftest import open_app, run_ok, texts


def _charts(at) -> list[dict]:
    import json

    return [json.loads(c.proto.spec) for c in at.get("arrow_vega_lite_chart") + at.get("vega_lite_chart")]


def test_overview_ranks_scale_changes_and_explains_findings(app_env):
    at = open_app(query={"run": "tiny-nan"})
    frames = [d for d in at.dataframe if "std over training" in d.value.columns]
    assert frames, "the overview shows the scale-change table"
    t = frames[0].value
    assert list(t.columns[:4]) == ["layer", "kind", "change", "onset"] and len(t) >= 1
    assert all(u.startswith("dynamics?") and "layer=" in u for u in t["open"])
    assert "baseline" in texts(at, "caption") and "BatchNorm" in texts(at, "caption")
    whys = [e for e in at.expander if e.label == "Why?"]
    assert whys and "Usually caused by" in "\n".join(m.value for m in whys[0].markdown)


def test_dynamics_distributions_on_request(app_env):
    at = open_app("dynamics", query={"run": "tiny"})
    at.button(key="traj_bands_btn").click()
    run_ok(at)
    assert any("p93" in str(s) and "p7" in str(s) for s in _charts(at)), "percentile bands drawn"
    at.toggle(key="w_bands_loss_same").set_value(True)
    run_ok(at)


def test_grid_filmstrip_on_request(app_env):
    at = open_app("grid", query={"run": "tiny"})
    n = len(at.get("imgs")) + len(at.get("image"))
    at.button(key="traj_film_btn").click()
    run_ok(at)
    imgs = at.get("imgs") + at.get("image")
    assert len(imgs) > n and "fixed scale" in str([i.proto for i in imgs])
    at.toggle(key="w_film_mean").set_value(True)
    run_ok(at)


def test_gates_excitation_scale(app_env):
    at = open_app("gates", query={"run": "tiny"})
    assert any("topk_share" in str(s) for s in _charts(at))
    assert "near-1" in texts(at, "caption")


def test_view_url_and_open_view_select_the_block():
    from core.analysis.diagnose import View
    from ui.diagnosis import view_url

    assert view_url("r 1", View("gates", block="block5_se", checkpoint=3)) == "gates?run=r+1&ckpt=3&block=block5_se"
    assert view_url("r", View("weights", layer="dense1", checkpoint=0)) == "weights?run=r&ckpt=0&layer=dense1"


def test_a_gate_finding_opens_se_gates_with_its_block_selected(runs_root, tmp_path, monkeypatch):
    from tests.fixtures import copy_run, plant_se_gates
    from tests.pages.conftest import REPO

    run = copy_run(runs_root / "tiny", tmp_path / "gates-off")
    plant_se_gates(run, 1, "block2", "off")
    monkeypatch.setenv("ADE_RUNS_ROOT", str(tmp_path))
    monkeypatch.chdir(REPO)
    at = open_app(query={"run": "gates-off"})
    show = [b for b in at.button if str(b.key or "").startswith("finding_overview_") and "block2_se" in (b.help or "")]
    assert show and show[0].help.startswith("Open SE gates"), [b.help for b in at.button]
    show[0].click()
    run_ok(at)
    assert at.title[0].value != "Overview"
    assert at.selectbox(key="w_gates_block").value == "block2_se"


def test_a_gates_link_selects_its_block(app_env):
    from core.analysis.diagnose import View
    from ui.diagnosis import view_url

    url = view_url("tiny", View("gates", block="block3_se", checkpoint=1))
    query = dict(p.split("=") for p in url.split("?")[1].split("&"))
    at = open_app(query={**query, "page": "gates"})
    assert at.title[0].value != "Overview"
    assert at.selectbox(key="w_gates_block").value == "block3_se"
