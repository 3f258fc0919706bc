"""In-memory corpus of awkward and broken image files for probe-loading tests."""
from __future__ import annotations

import io
import struct
import zlib
from typing import Literal

import numpy as np
from PIL import Image

Expected = Literal["ok", "error"]


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise_rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _gradient_rgb(w: int, h: int) -> Image.Image:
    """Smooth content (compresses well, so truncation cuts into real scan data)."""
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], -1)
    return Image.fromarray(a.astype(np.uint8), "RGB")


def patch_png_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite a PNG's IHDR width/height (and its CRC) without touching the pixel data."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    ihdr = bytearray(png[16:29])  # 13 bytes of IHDR data
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return png[:16] + bytes(ihdr) + crc + png[33:]


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """80×40 (w×h) JPEG, left half red and right half blue, with an EXIF orientation tag.

    Orientation 6 means "rotate 90° clockwise to display": upright it is 40×80 with red on top.
    """
    a = np.zeros((40, 80, 3), np.uint8)
    a[:, :40] = (255, 0, 0)
    a[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(Image.fromarray(a, "RGB"), "JPEG", quality=95, exif=exif.tobytes())


def grey16_png() -> bytes:
    """16-bit greyscale PNG whose values span 1000..3000 (a horizontal ramp)."""
    ramp = np.linspace(1000, 3000, 64).astype(np.uint16)
    a = np.tile(ramp, (32, 1))
    return _encode(Image.fromarray(a), "PNG")


def _animated_gif() -> bytes:
    """Four 32×32 frames: red (the first, which is what gets loaded), green, blue, white."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    frames = [Image.new("RGB", (32, 32), c) for c in colours]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _palette_transparent_png() -> bytes:
    im = Image.new("P", (24, 24), 0)
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    im.paste(1, (6, 6, 18, 18))
    return _encode(im, "PNG", transparency=0)


def _rgba_png() -> bytes:
    a = np.zeros((30, 40, 4), np.uint8)
    a[..., 0] = 200
    a[..., 3] = np.linspace(0, 255, 40).astype(np.uint8)[None, :]
    return _encode(Image.fromarray(a, "RGBA"), "PNG")


def _la_png() -> bytes:
    a = np.zeros((20, 20, 2), np.uint8)
    a[..., 0] = 50
    a[..., 1] = 128
    return _encode(Image.fromarray(a, "LA"), "PNG")


def _float_tiff() -> bytes:
    a = np.linspace(-3.5, 12.25, 48 * 32, dtype=np.float32).reshape(32, 48)
    a[0, 0] = np.nan
    return _encode(Image.fromarray(a), "TIFF")


def _int32_tiff() -> bytes:
    a = (np.arange(24 * 24, dtype=np.int32).reshape(24, 24) * 1000) - 100_000
    return _encode(Image.fromarray(a), "TIFF")


def _cmyk_jpeg() -> bytes:
    return _encode(_gradient_rgb(48, 32).convert("CMYK"), "JPEG", quality=90)


def bad_image_corpus() -> list[tuple[str, bytes, Expected]]:
    """(name, file bytes, "ok" | "error") for every awkward case probe loading must survive."""
    rng = np.random.default_rng(1234)
    jpeg = _encode(_gradient_rgb(256, 256), "JPEG", quality=90)
    png = _encode(_noise_rgb(128, 128), "PNG")
    small_png = _encode(_noise_rgb(8, 8), "PNG")
    return [
        # refused
        ("empty.png", b"", "error"),
        ("random_bytes.png", rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(), "error"),
        ("text.jpg", b"this is not an image, just some text\n" * 20, "error"),
        ("truncated.jpg", jpeg[: len(jpeg) // 2], "error"),
        ("truncated.png", png[: len(png) // 2], "error"),
        ("header_only.png", png[:40], "error"),
        ("bomb_30000x30000.png", patch_png_size(small_png, 30_000, 30_000), "error"),
        ("bomb_8000x8000.png", patch_png_size(small_png, 8_000, 8_000), "error"),
        ("zero_width.png", patch_png_size(small_png, 0, 8), "error"),
        # handled
        ("one_pixel.png", _encode(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"), "ok"),
        ("wide_4000x20.png", _encode(_gradient_rgb(4000, 20), "PNG"), "ok"),
        ("tall_20x4000.png", _encode(_gradient_rgb(20, 4000), "PNG"), "ok"),
        ("grey16.png", grey16_png(), "ok"),
        ("cmyk.jpg", _cmyk_jpeg(), "ok"),
        ("palette_transparent.png", _palette_transparent_png(), "ok"),
        ("animated.gif", _animated_gif(), "ok"),
        ("exif_rot6.jpg", exif_rotated_jpeg(6), "ok"),
        ("image.webp", _encode(_gradient_rgb(50, 40), "WEBP", quality=80), "ok"),
        ("image.bmp", _encode(_gradient_rgb(50, 40), "BMP"), "ok"),
        ("image.tiff", _encode(_gradient_rgb(50, 40), "TIFF"), "ok"),
        ("rgba.png", _rgba_png(), "ok"),
        ("la.png", _la_png(), "ok"),
        ("mode1.png", _encode(Image.fromarray(rng.integers(0, 2, (16, 16)).astype(bool)), "PNG"), "ok"),
        ("grey.png", _encode(_gradient_rgb(30, 30).convert("L"), "PNG"), "ok"),
        ("float_F.tiff", _float_tiff(), "ok"),
        ("int32_I.tiff", _int32_tiff(), "ok"),
        ("photo.jpg", jpeg, "ok"),
    ]
