"""Headless Chromium helpers shared by the browser test and bench/bench_scrub.py."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHROMIUM = Path("/usr/bin/chromium")
CHROME_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-quic"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def idle(page, timeout: float = 180_000, settle_ms: int = 300) -> None:
    """Wait until the app's script run is over (Streamlit marks the root element)."""
    page.wait_for_timeout(settle_ms)
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=timeout)


#: The channel grid (HTML, see ``core.render.grids.tiles_html``) once drawn.
GRID = '[data-testid="stMain"] .ade-grid'


def grid_src(page) -> str:
    """Identity of the channel grid shown: its class, which names its tiles' content ("" before it is drawn)."""
    grid = page.locator(GRID)
    return (grid.first.get_attribute("class") or "") if grid.count() else ""


def grid_is_painted(page) -> bool:
    """The grid's first tile has a size, its inline PNG as background and no smoothing (pixelated)."""
    return bool(page.locator(GRID).first.evaluate(
        "g => { const t = g.querySelector('.t'); if (!t) return false; const s = getComputedStyle(t);"
        " return t.getBoundingClientRect().width > 0 && s.imageRendering === 'pixelated'"
        " && s.backgroundImage.startsWith('url(\"data:image/png'); }"))


def start_app(launcher: list[str], root: Path, log: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """``<launcher> app.py`` on a free loopback port over the runs ``root``: (process, url) once it answers.

    ``launcher``: ``[python, "-m", "streamlit", "run"]`` or a wrapper taking the same arguments.
    Raises RuntimeError with the end of ``log`` when the server does not come up in 90 s.
    """
    port = free_port()
    proc = subprocess.Popen(
        [*launcher, "app.py", "--server.port", str(port), "--server.headless", "true", "--server.address",
         "127.0.0.1", "--browser.gatherUsageStats", "false", "--", "--runs-root", str(root)],
        cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    t_end = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
            return proc, url
        except OSError:
            if proc.poll() is not None or time.monotonic() > t_end:
                stop_app(proc)
                raise RuntimeError(f"streamlit did not start:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.3)


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


STREAMLIT_RUN = [sys.executable, "-m", "streamlit", "run"]
