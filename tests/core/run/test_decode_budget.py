"""Image decoding checks bytes per pixel x pixels against a budget before any pixel is decoded."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from core.run.images import DEFAULT_DECODE_BUDGET, ImageError, decode_cost, load_probe_image


def _png16(w: int, h: int) -> bytes:
    row = (np.arange(w, dtype=np.uint32) * 9 % 65536).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(np.broadcast_to(row, (h, w)).copy()).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bomb16() -> bytes:
    return _png16(7000, 7000)


def test_small_16_bit_png_of_49_megapixels_is_refused_before_decoding(bomb16, monkeypatch):
    assert len(bomb16) < 300_000
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self, *a, **k: decoded.append(self.size))
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", lambda self, *a, **k: decoded.append(self.size))
    with pytest.raises(ImageError, match=r"7000×7000, mode I;16.*would need about \d+ MB"):
        load_probe_image(bomb16, (24, 24))
    assert decoded == []


def test_cost_counts_the_high_depth_conversion():
    im = Image.open(io.BytesIO(_png16(100, 50)))
    assert im.mode.startswith("I") and decode_cost(im) == 100 * 50 * 32
    rgb = Image.new("RGB", (100, 50))
    assert decode_cost(rgb) == 100 * 50 * 6


def test_images_within_the_budget_still_load():
    arr = load_probe_image(_png16(1000, 800), (24, 24), channels=1)
    assert arr.shape == (24, 24, 1) and arr.dtype == np.uint8 and arr.max() > arr.min()
    assert 1000 * 800 * 32 < DEFAULT_DECODE_BUDGET


def test_budget_is_a_parameter():
    buf = io.BytesIO()
    Image.new("RGB", (400, 400), (10, 20, 30)).save(buf, format="PNG")
    with pytest.raises(ImageError, match="MB allowed"):
        load_probe_image(buf.getvalue(), (8, 8), decode_budget=100_000)
    assert load_probe_image(buf.getvalue(), (8, 8)).shape == (8, 8, 3)
