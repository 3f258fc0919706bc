"""Headless Chromium helpers shared by the browser test and bench/bench_scrub.py."""
from __future__ import annotations

import socket
from pathlib import Path

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


def grid_src(page) -> str:
    """src of the channel grid image (the largest image in the main area)."""
    imgs = page.locator('[data-testid="stMain"] [data-testid="stImage"] img')
    best, area = "", -1
    for i in range(imgs.count()):
        box = imgs.nth(i).bounding_box() or {"width": 0, "height": 0}
        if box["width"] * box["height"] > area:
            best, area = imgs.nth(i).get_attribute("src") or "", box["width"] * box["height"]
    return best
