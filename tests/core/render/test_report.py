"""core.render.report: self-contained HTML (inline SVG, no external resources), rendered in headless Chromium."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import altair as alt
import pandas as pd
import pytest

from core.render import report as R

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic"]


@dataclass(frozen=True)
class _F:
    kind: str
    severity: str
    layers: tuple[str, ...]
    mini_epoch: int
    message: str
    evidence: dict = field(default_factory=dict)


def test_svg_ids_are_prefixed_so_inline_charts_do_not_clash():
    df = pd.DataFrame({"x": ["a", "b"], "y": ["c", "d"], "v": [1.0, 10.0]})
    chart = alt.Chart(df).mark_rect().encode(x="x:N", y="y:N", color=alt.Color("v:Q"))  # gradient legend: ids
    s = R.svg(chart, "f7")
    ids = re.findall(r'\bid="([^"]+)"', s)
    refs = re.findall(r"url\(#([^)]+)\)", s)
    assert ids and all(i.startswith("f7-") for i in ids)
    assert refs and set(refs) <= set(ids)


def test_external_references():
    assert R.external_references('<img src="https://cdn.example/x.js"><a href=\'//host/y\'>') != []
    assert len(R.external_references('<script src="http://a/b.js"></script>')) == 1
    ok = '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"><a href="#x">'
    assert R.external_references(ok) == []


def test_tables_escape_text():
    t = R.kv_table({"a": {"b": "<script>x</script>"}, "c": [1, 2]})
    assert "&lt;script&gt;" in t and "<script>" not in t and "<th>a.b</th>" in t and "1, 2" in t
    f = R.frame_table(pd.DataFrame({"n": [1.23456789], "s": ["<b>"]}), "tbl")
    assert 'id="tbl"' in f and "1.235" in f and "&lt;b&gt;" in f


def test_findings_table_keeps_the_severity_order():
    rep = R.RunReport("r", None, pd.DataFrame(), None, findings=(
        _F("nan_inf", "problem", ("conv1",), 2, "NaN in conv1", {"n": 3}),
        _F("gates_off", "warning", ("blk",), 1, "gates off"),
        _F("bn_stat_mismatch", "info", ("bn",), 0, "BatchNorm warm-up")))
    h = R.findings_html(rep)
    assert h.index("problem") < h.index("warning") < h.index(">info<")
    assert "3 findings: 1 problem, 1 warning, 1 info." in h and "n=3" in h
    assert "No findings" in R.findings_html(R.RunReport("r", None, pd.DataFrame(), None))


@pytest.fixture(scope="module")
def reports(tmp_path_factory, runs_root) -> tuple[Path, Path]:
    """report of tiny alone, and of tiny vs tiny-shrunk, written through the CLI."""
    from core.__main__ import main
    from tests.core.analysis.test_compare import compare_root

    root = compare_root(tmp_path_factory, runs_root)
    out = tmp_path_factory.mktemp("reports")
    assert main(["report", str(root / "tiny"), "--out", str(out / "tiny.html")]) == 0
    assert main(["report", "tiny", "--vs", "tiny-shrunk", "--runs-root", str(root), "--out",
                 str(out / "vs.html")]) == 0
    return out / "tiny.html", out / "vs.html"


def test_report_is_self_contained(reports):
    single, vs = (p.read_text(encoding="utf-8") for p in reports)
    for text in (single, vs):
        assert R.external_references(text) == []
        assert "<script" not in text and "<link" not in text and "@import" not in text
        for i in ("config", "findings", "chart-loss", "chart-std-heatmap", "chart-gate-saturation",
                  "chart-gate-hist"):
            assert f'id="{i}"' in text
        assert text.count("<svg") >= 6
    assert 'id="compare"' not in single
    for i in ("compare", "chart-compare-loss", "chart-compare-std", "chart-compare-gates", "biggest-differences"):
        assert f'id="{i}"' in vs
    assert "Same architecture: all 27 layers and 3 SE blocks are compared." in vs
    table = vs[vs.index('id="biggest-differences"'):]
    assert table.index("stem_conv") < table.index("</tr>", table.index("<tbody>") + 10)  # first row


@pytest.mark.browser
def test_report_renders_in_chromium(reports, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    shots = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            for path in reports:
                page.goto(path.resolve().as_uri())
                assert page.locator("#findings h2").inner_text() == "Findings"
                for i in ("chart-loss", "chart-std-heatmap", "chart-gate-saturation", "chart-gate-hist"):
                    box = page.locator(f"#{i} svg").first.bounding_box()
                    assert box is not None and box["width"] > 200 and box["height"] > 100, i
                assert page.locator("#chart-loss svg text", has_text="loss").count() >= 1
                assert page.locator("#chart-std-heatmap svg text", has_text="stem_conv").count() >= 1
                shot = tmp_path / f"{path.stem}.png"
                page.screenshot(path=str(shot), full_page=True)
                shots.append(shot)
            assert page.locator("#biggest-differences tbody tr").count() >= 5
            assert page.locator("#chart-compare-std svg").count() == 1
        finally:
            browser.close()
    assert [u for u in requests if not u.startswith("file://")] == []
    assert all(s.stat().st_size > 10_000 for s in shots)


def test_scale_table_filmstrip_and_why_in_the_report():
    import numpy as np

    from core.analysis.diagnose import Advice, Finding, View
    from core.analysis.trajectory import Filmstrip

    scale = pd.DataFrame({"layer": ["a", "b"], "kind": ["conv", "conv"], "change": [12.0, 2.0],
                          "direction": ["shrink", "growth"], "onset": [3, -1], "baseline_mini_epoch": [0, 0],
                          "std_baseline": [1.0, 1.0], "std_last": [0.08, 2.0], "std_min": [0.08, 1.0],
                          "min_mini_epoch": [5, 0]})
    fs = Filmstrip("a", None, (0, 1), np.stack([np.eye(3), np.zeros((3, 3))]).astype(np.float32), 0.0, 1.0)
    f = Finding("activation_collapse", "problem", ("a",), 3, "collapses.", {}, "a", View("dynamics", "a", "", 3),
                Advice("weight decay", "less L2", "the kernel norm fell"))
    rep = R.RunReport("r", None, pd.DataFrame(), None, findings=(f,), scale=scale, filmstrip=fs)
    html = R.scale_html(rep) + R.filmstrip_html(rep) + R.findings_html(rep)
    assert "12.0x smaller" in html and ">3<" in html and ">—<" in html
    assert 'id="filmstrip"' in html and "data:image/png;base64," in html
    assert "<summary>Why?</summary>" in html and "the kernel norm fell" in html
    assert "Not enough judged" in R.scale_html(R.RunReport("r", None, pd.DataFrame(), None))
