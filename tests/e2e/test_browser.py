"""End to end in headless Chromium: first render, upload, keyboard scrubbing, every page without exception.

Screenshots go to tests/e2e/screenshots/; with ADE_README_SCREENSHOTS=1 also to docs/img/ (overview, grid,
dynamics, gates) for the README, taken on the demo runs when data/runs/demo-* exist.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from tests.e2e.browser import CHROME_ARGS, CHROMIUM, STREAMLIT_RUN, GRID, grid_is_painted, grid_src, idle, start_app, stop_app

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "tests" / "e2e" / "screenshots"
README_IMG = REPO / "docs" / "img"
PHOTO = REPO / "data" / "photos" / "chelsea.png"  # a built-in photo, shipped in the repository
NAV = {"overview": "Overview", "grid": "Channel grid", "dynamics": "Dynamics", "gates": "SE gates",
       "weights": "Weights"}
README_PAGES = ("overview", "grid", "dynamics", "gates")


def _demo_root() -> Path | None:
    """data/runs when both demo runs have checkpoints (the README screenshots use them)."""
    root = REPO / "data" / "runs"
    ok = [d for d in root.glob("demo-*") if (d / "manifest.json").exists() and len(list((d / "checkpoints").glob("*.npz"))) >= 2]
    return root if len(ok) >= 2 else None


@pytest.fixture(scope="module")
def server(runs_root, tmp_path_factory):
    """A real `streamlit run app.py` on a free port over a runs root with the tiny run (or the demos)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) for the browser test")
    pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
    readme = os.environ.get("ADE_README_SCREENSHOTS") == "1"
    root = _demo_root() if readme else None
    if root is None:
        root = tmp_path_factory.mktemp("e2e_runs")
        shutil.copytree(runs_root / "tiny", root / "tiny")
    env = dict(os.environ, ADE_RUNS_ROOT=str(root), TF_CPP_MIN_LOG_LEVEL="2")
    log = tmp_path_factory.mktemp("e2e_log") / "streamlit.log"
    t_start = time.monotonic()
    try:
        proc, url = start_app(STREAMLIT_RUN, root, log, env)
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield url, root, readme, t_start
    finally:
        stop_app(proc)


def _no_exception(page, where: str) -> None:
    n = page.locator('[data-testid="stException"]').count()
    assert n == 0, f"{where}: {page.locator('[data-testid=stException]').first.inner_text()[:2000]}"


class Console:
    """The browser console's errors and warnings (Vega prints its warnings there), per page visited."""

    def __init__(self, page) -> None:
        self.seen: list[str] = []
        page.on("console", self._add)
        page.on("pageerror", lambda e: self.seen.append(f"pageerror: {e}"))
        page.on("response", self._response)

    def _add(self, msg) -> None:
        # a failed request is reported with its address by the response handler
        if msg.type in ("error", "warning") and not msg.text.startswith("Failed to load resource"):
            self.seen.append(f"{msg.type}: {msg.text}")

    def _response(self, r) -> None:
        # Streamlit's page finds the server's base path by trying /<page>/_stcore/... first (a 404 at /grid)
        if r.status >= 400 and not (r.status == 404 and re.search(r"/[a-z_]+/_stcore/(host-config|health)$", r.url)):
            self.seen.append(f"HTTP {r.status} {r.url}")

    def check(self, where: str) -> None:
        """No error and no warning since the last check."""
        seen, self.seen = self.seen, []
        assert not seen, f"{where}: the browser console says\n" + "\n".join(seen[:20])


def _url_ckpt(page) -> int:
    from urllib.parse import parse_qs, urlparse

    return int(parse_qs(urlparse(page.url).query)["ckpt"][0])


def _shot(page, name: str, readme: bool) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    if readme and name in README_PAGES:
        README_IMG.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(README_IMG / f"{name}.png"), full_page=True)


def test_browser_end_to_end(server):
    from playwright.sync_api import sync_playwright

    url, root, readme, t_start = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROME_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 2200 if readme else 1400})
            console = Console(page)
            run = "demo-troubled" if (root / "demo-troubled").exists() else "tiny"
            t0 = time.perf_counter()
            page.goto(f"{url}/grid?run={run}")
            page.wait_for_selector("h1", timeout=120_000)
            t_content = time.perf_counter() - t0
            page.wait_for_selector(GRID, timeout=180_000)  # the time is printed; bench/ measures it
            t_grid, t_run = time.perf_counter() - t0, time.monotonic() - t_start
            idle(page)
            print(f"\nfirst render on a fresh server: page content {t_content:.1f} s, channel grid {t_grid:.1f} s "
                  f"after opening the page; {t_run:.1f} s after `streamlit run` started (the "
                  "server imports TensorFlow while the browser loads the page)")
            _no_exception(page, "grid")
            console.check("grid")
            assert grid_is_painted(page), "the grid's tiles are not drawn from their inline image"

            # scrub with the keyboard: focus the slider thumb (role slider: a hidden range input in
            # Streamlit 1.67, no aria-valuenow), ArrowLeft, and the grid changes
            before = grid_src(page)
            thumb = page.locator('[data-testid="stSidebar"]').get_by_role("slider").first
            thumb.focus()
            page.keyboard.press("ArrowLeft")
            idle(page)
            after = grid_src(page)
            assert after and after != before, "the grid image did not change after scrubbing"
            _no_exception(page, "grid after scrubbing")
            assert "ckpt=" in page.url

            # Play (one step before the end): steps forward by itself, then switches itself off at the end
            ckpt_before_play = _url_ckpt(page)
            play = page.locator('[data-testid="stSidebar"] [data-testid="stCheckbox"]').filter(has_text="Play")
            play.locator("label").first.click()
            t_end = time.monotonic() + 30
            # "" while switching Play on redraws the page: wait for a drawn grid that differs
            while grid_src(page) in ("", after) and time.monotonic() < t_end:
                page.wait_for_timeout(200)
            assert grid_src(page) not in ("", after), "Play did not step to the next checkpoint"
            page.wait_for_function("() => [...document.querySelectorAll('[data-testid=stSidebar] input')]"
                                   ".every(i => i.type !== 'checkbox' || !i.checked)", timeout=30_000)
            idle(page)
            _no_exception(page, "grid after Play")
            console.check("grid after Play")
            # it ends on the last checkpoint and stays there (a request sent before the browser drew
            # the moved scrubber used to move it back, or switch Play on again: ui.persist.moved)
            assert _url_ckpt(page) == ckpt_before_play + 1, (page.url, ckpt_before_play)
            after = grid_src(page)

            # upload a built-in photo (shipped in data/photos)
            page.get_by_text("Upload", exact=True).click()
            idle(page)
            page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(PHOTO))
            idle(page)
            page.wait_for_selector("text=upload chelsea.png", timeout=60_000)
            _no_exception(page, "grid after upload")
            assert grid_src(page) != after
            page.get_by_text("Probe set", exact=True).click()
            idle(page)
            with page.expect_download(timeout=30_000) as dl:  # the grid shown, as one PNG with its labels
                page.get_by_role("button", name="Download the grid (PNG)").first.click()
            png = Path(dl.value.path()).read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000, "the grid download is not a PNG"
            _shot(page, "grid", readme)

            # every page through the sidebar navigation
            for name, title in NAV.items():
                page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True).click()
                idle(page)
                page.wait_for_timeout(800)  # charts finish drawing
                _no_exception(page, name)
                console.check(name)
                assert f"page={name}" in page.url
                _shot(page, name, readme)
                if name == "dynamics":
                    _export_downloads(page)
            _follow_scale_row(page, console)
            if readme and run == "demo-troubled":
                _readme_views(page, url)
        finally:
            browser.close()


def _follow_scale_row(page, console) -> None:
    """The Overview's ranked scale-change table: its first row's layer opens on Dynamics in the same tab."""
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Overview", exact=True).click()
    idle(page)
    page.wait_for_selector("text=Scale changes, largest first", timeout=120_000)
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text="Layer (ranked as above)")
    # the label and the layer selected (the table's first row; Streamlit's combobox keeps it in an input)
    shown = box.first.evaluate("e => e.textContent + ' ' + [...e.querySelectorAll('input')].map(i => i.value"
                               " || i.getAttribute('aria-label') || '').join(' ')")
    page.get_by_role("button", name="Open on Dynamics").click()
    page.wait_for_function("() => location.search.includes('page=dynamics')", timeout=60_000)
    idle(page)
    layer = parse_qs(urlparse(page.url).query).get("layer", [""])[0]
    assert layer and layer in shown.replace("Layer (ranked as above)", ""), (shown, page.url)
    assert layer in page.locator('[data-testid="stMain"]').inner_text(), f"Dynamics does not show {layer}"
    _no_exception(page, "dynamics from the scale table")
    console.check("dynamics from the scale table")


def _export_downloads(page) -> None:
    """The first chart's Export popover: PNG, SVG and CSV are produced on click and downloaded."""
    page.locator('[data-testid="stPopover"]').first.locator("button").first.click()
    for label, head in (("PNG image", b"\x89PNG"), ("SVG image", b"<svg"), ("Table (CSV)", b"image,")):
        with page.expect_download(timeout=60_000) as dl:
            page.get_by_role("button", name=label).first.click()
        data = Path(dl.value.path()).read_bytes()
        assert data.lstrip()[:len(head)] == head, (label, data[:40])
    page.keyboard.press("Escape")


def _readme_views(page, url: str) -> None:
    """README pictures on demo-troubled: the collapse of block1_conv1 on a fixed colour scale, and its dynamics."""
    page.goto(f"{url}/grid?run=demo-troubled&layer=block1_conv1&ckpt=8")
    idle(page)
    page.locator('[data-testid="stSelectbox"]').filter(has_text="Colour scale").click()
    page.get_by_role("option", name="fixed (all checkpoints)").click()
    idle(page)
    page.wait_for_timeout(800)
    _no_exception(page, "grid (fixed scale)")
    _shot(page, "grid", True)
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Dynamics", exact=True).click()
    idle(page)
    page.wait_for_timeout(1000)
    _no_exception(page, "dynamics (block1_conv1)")
    _shot(page, "dynamics", True)
