"""Drawing text into uint8 RGB images, stacking them and encoding them as PNG (pure numpy, Pillow and zlib)."""
from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType
        return ImageFont.load_default()


@lru_cache(maxsize=8)
def _glyphs(size: int) -> tuple[dict[str, np.ndarray], int]:
    """Alpha masks uint8 (H, advance) of the printable ASCII characters in the label font, and H."""
    font = _font(size)
    ascent, descent = font.getmetrics() if hasattr(font, "getmetrics") else (size, 2)
    h = ascent + descent
    out = {}
    for code in range(32, 127):
        ch = chr(code)
        w = max(1, int(round(font.getlength(ch))))
        im = Image.new("L", (w, h), 0)
        ImageDraw.Draw(im).text((0, 0), ch, fill=255, font=font)
        out[ch] = np.asarray(im)
    return out, h


@lru_cache(maxsize=256)
def _glyph(ch: str, size: int) -> np.ndarray:
    """A character outside printable ASCII ("·", "×", "–", "≈"...), drawn the way ``_glyphs`` draws."""
    font = _font(size)
    _, h = _glyphs(size)
    w = max(1, int(round(font.getlength(ch))))
    im = Image.new("L", (w, h), 0)
    ImageDraw.Draw(im).text((0, 0), ch, fill=255, font=font)
    return np.asarray(im)


@lru_cache(maxsize=8192)
def text_mask(text: str, size: int) -> np.ndarray:
    """One line of text as an alpha mask uint8 (H, W) from cached glyphs (no kerning; fast)."""
    glyphs, h = _glyphs(size)
    parts = [glyphs[ch] if ch in glyphs else _glyph(ch, size) for ch in text]
    out = np.hstack(parts) if parts else np.zeros((h, 0), np.uint8)
    out.flags.writeable = False  # cached and shared
    return out


def draw_text(img: np.ndarray, y: int, x: int, text: str, size: int, colour: tuple[int, int, int],
              spacing: int = 1) -> None:
    """Draw (multi-line) ``text`` into uint8 (H, W, 3) ``img`` at (y, x), in place, clipped to the image."""
    for line in text.split("\n"):
        m = text_mask(line, size)
        hh, ww = m.shape
        y1, x1 = min(img.shape[0], y + hh), min(img.shape[1], x + ww)
        if y1 > y and x1 > x:
            a = m[:y1 - y, :x1 - x, None].astype(np.float32) / 255.0
            reg = img[y:y1, x:x1].astype(np.float32)
            img[y:y1, x:x1] = (reg * (1.0 - a) + np.asarray(colour, np.float32) * a + 0.5).astype(np.uint8)
        y += hh + spacing


def stack(images: Sequence[np.ndarray], gap: int = 8, background: int = 255) -> np.ndarray:
    """uint8 RGB images (H_i, W_i, 3) one under the other, left-aligned, ``gap`` px apart -> uint8 (H, max W_i, 3)."""
    h = sum(im.shape[0] for im in images) + gap * max(0, len(images) - 1)
    out = np.full((h, max((im.shape[1] for im in images), default=0), 3), background, np.uint8)
    y = 0
    for im in images:
        out[y:y + im.shape[0], :im.shape[1]] = im
        y += im.shape[0] + gap
    return out


def to_png(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """uint8 (H, W, 3) or (H, W) -> PNG bytes (fast, lightly compressed).

    Written directly (rows with filter "none", zlib at ``compress_level``): faster than
    Pillow's encoder at the same level (bench/bench_internals.py) and no larger on these images, whose flat
    tiles and labels compress well without Pillow's per-row filters.
    """
    px = np.ascontiguousarray(pixels)
    if px.dtype != np.uint8 or px.ndim not in (2, 3) or (px.ndim == 3 and px.shape[2] != 3) or 0 in px.shape:
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="PNG", compress_level=compress_level)
        return buf.getvalue()
    h, w = px.shape[:2]
    rows = np.zeros((h, 1 + px[0].size), np.uint8)  # a leading 0 per row: filter type "none"
    rows[:, 1:] = px.reshape(h, -1)
    colour = 2 if px.ndim == 3 else 0  # truecolour or greyscale, 8 bits
    return b"".join((b"\x89PNG\r\n\x1a\n",
                     _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)),
                     _png_chunk(b"IDAT", _deflate(rows.tobytes(), compress_level)),
                     _png_chunk(b"IEND", b"")))


#: Inputs from this size are deflated as two halves in two threads (zlib releases the GIL).
PARALLEL_DEFLATE_BYTES = 256 * 1024
_deflate_pool: ThreadPoolExecutor | None = None


def _deflate(data: bytes, level: int) -> bytes:
    """A zlib stream of ``data``; large inputs as two independently compressed halves, as pigz does.

    The first half ends with a sync flush (a byte boundary, not the last block), so the
    two raw deflate streams concatenate into one valid stream: half the time on two cores.
    """
    global _deflate_pool
    if len(data) < PARALLEL_DEFLATE_BYTES or level == 0:
        return zlib.compress(data, level)
    if _deflate_pool is None:
        _deflate_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="png-deflate")
    view = memoryview(data)
    mid = len(data) // 2
    head = _deflate_pool.submit(_raw_deflate, view[:mid], level, zlib.Z_SYNC_FLUSH)
    tail = _raw_deflate(view[mid:], level, zlib.Z_FINISH)
    header = b"\x78\x01"  # deflate, 32 KB window, "fastest" (the level field is informative only)
    return header + head.result() + tail + struct.pack(">I", zlib.adler32(data))


def _raw_deflate(chunk: memoryview, level: int, end: int) -> bytes:
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    return c.compress(chunk) + c.flush(end)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
