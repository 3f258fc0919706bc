"""Channel inspector page (AppTest): top probes and their ranks, first-layer filters, most wrong probes."""
from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.core.analysis.test_compare import compare_root

REPO = Path(__file__).resolve().parents[2]


def test_inspector_page(tmp_path_factory, runs_root, monkeypatch):
    monkeypatch.setenv("ADE_RUNS_ROOT", str(compare_root(tmp_path_factory, runs_root)))
    monkeypatch.chdir(REPO)
    at = AppTest.from_file(str(REPO / "pages" / "inspector.py"), default_timeout=90)
    at.run()
    assert not at.exception, at.exception
    assert at.selectbox(key="w_run").value == "tiny"
    assert not at.error and not at.warning
    assert len(at.get("vega_lite_chart")) + len(at.get("arrow_vega_lite_chart")) == 1  # rank trajectories
    assert [s.value for s in at.subheader] == [
        "Probe images that activate a channel most", "First-layer filters",
        "Probe images the model gets most wrong at mini-epoch 3"]
    captions = " ".join(c.value for c in at.caption)
    assert "Probe-set accuracy at mini-epoch 3:" in captions and "Of the top 8 at mini-epoch 3" in captions
    table = at.dataframe[0].value
    assert len(table) == 8 and table["loss"].is_monotonic_decreasing
    n_images = len(at.get("imgs")) + len(at.get("image"))
    assert n_images >= 4  # top probes, filter grid, filter evolution, most wrong probes
    # the first conv layer: its filter of the chosen channel is highlighted and followed over checkpoints
    at.selectbox(key="w_layer").set_value("stem_conv").run()
    at.number_input(key="w_insp_channel").set_value(5).run()
    assert not at.exception, at.exception
    filters = [m for m in at.multiselect if m.label == "Filters over checkpoints"]
    assert len(filters) == 1 and filters[0].value == [5]
    at.radio(key="w_insp_scale").set_value("over_time").run()
    at.selectbox(key="w_insp_by").set_value("max").run()
    assert not at.exception, at.exception
    # another checkpoint: the ranking and the predictions follow the scrubber
    at.select_slider(key="w_ckpt").set_value(1).run()
    assert not at.exception, at.exception
    assert at.subheader[2].value == "Probe images the model gets most wrong at mini-epoch 1"
