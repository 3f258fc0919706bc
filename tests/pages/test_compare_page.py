"""Compare page (AppTest): same architecture, different architectures, images-seen alignment, too few runs."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.core.analysis.test_compare import compare_root

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def app(tmp_path_factory, runs_root, monkeypatch):
    """The Compare page over tiny, tiny-shrunk (same architecture) and tiny-nose (no SE blocks)."""
    root = compare_root(tmp_path_factory, runs_root)
    monkeypatch.setenv("ADE_RUNS_ROOT", str(root))
    monkeypatch.chdir(REPO)

    def make(runs: list[str]) -> AppTest:
        at = AppTest.from_file(str(REPO / "pages" / "compare.py"), default_timeout=90)
        at.run()
        assert not at.exception, at.exception
        at.multiselect(key="w_compare_runs").set_value(runs).run()
        assert not at.exception, at.exception
        return at

    return make


def _charts(at: AppTest) -> int:
    return len(at.get("vega_lite_chart")) + len(at.get("arrow_vega_lite_chart"))


def test_same_architecture(app):
    at = app(["tiny", "tiny-shrunk"])
    assert [i.value for i in at.info][0] == "Same architecture: all 27 layers and 3 SE blocks are compared."
    assert not at.warning and not at.error
    assert _charts(at) == 4  # loss, std, dead channels, gate saturation
    assert len(at.get("imgs")) + len(at.get("image")) >= 3  # one grid per run + the probe image
    diff = at.dataframe[0].value
    top = diff.iloc[0]
    assert (top["layer"], top["mini_epoch"]) == ("stem_conv", 3) and top["ratio"] == pytest.approx(400, rel=1e-3)
    assert list(diff.columns[4:6]) == ["tiny", "tiny-shrunk"]
    # std of the layer where they differ, aligned by images seen: still no exception
    at.selectbox(key="w_layer").set_value("stem_conv").run()
    at.radio(key="w_x_axis").set_value("images_seen").run()
    assert not at.exception, at.exception
    assert _charts(at) == 4
    assert at.query_params["runs"] == "tiny,tiny-shrunk"


def test_different_architectures_say_what_is_not_shared(app):
    at = app(["tiny", "tiny-nose"])
    msgs = [w.value for w in at.warning]
    assert len(msgs) == 1 and msgs[0].startswith("Different architectures: compared on the 15 layers they share.")
    assert "Only in tiny (not compared): block1_se_reduce" in msgs[0]
    assert "No SE block is shared by these runs (tiny: 3 blocks, tiny-nose: 0 blocks)." in [i.value for i in at.info]
    assert _charts(at) == 3  # loss, std, dead channels
    assert at.selectbox(key="w_layer").options[:2] == ["stem_conv", "stem_act"]
    assert "block1_se_gate" not in at.selectbox(key="w_layer").options
    assert len(at.dataframe) == 1


def test_fewer_than_two_runs(app):
    at = AppTest.from_file(str(REPO / "pages" / "compare.py"), default_timeout=90)
    at.run()
    at.multiselect(key="w_compare_runs").set_value(["tiny"]).run()
    assert not at.exception
    assert "Pick at least two runs in the sidebar." in [i.value for i in at.info]
    assert _charts(at) == 0
