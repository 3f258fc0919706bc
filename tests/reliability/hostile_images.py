"""The bad-image corpus of tests/badimages.py plus the cases it lacks (bombs in other formats, lying headers...).

Each entry: (name, bytes, expected) with expected "ok", "error" or "either" (the file is
damaged in a way a decoder may legitimately tolerate: then the result must still be a valid image).
"""
from __future__ import annotations

import io
import struct
import zipfile
import zlib

import numpy as np
from PIL import Image

from tests.badimages import bad_image_corpus, exif_rotated_jpeg


def _enc(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _grad(w: int, h: int) -> Image.Image:
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx * 7 + yy * 3) % 256], -1)
    return Image.fromarray(a.astype(np.uint8), "RGB")


def jpeg_with_size(width: int, height: int) -> bytes:
    """A small JPEG whose SOF header declares ``width`` x ``height`` (a JPEG decompression bomb)."""
    data = bytearray(_enc(_grad(16, 16), "JPEG", quality=80))
    i = 2
    while i < len(data):
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xC3:
            data[i + 5:i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def gif_with_size(width: int, height: int) -> bytes:
    """A one-frame GIF whose logical screen declares ``width`` x ``height``."""
    data = bytearray(_enc(Image.new("P", (8, 8), 1), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def png_text_bomb() -> bytes:
    """A valid 8x8 PNG with a zTXt chunk that inflates to 64 MB (Pillow caps text chunks)."""
    png = _enc(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG")
    payload = b"Comment\x00\x00" + zlib.compress(b"\x00" * (64 << 20), 9)
    chunk = struct.pack(">I", len(payload) - 0) + b"zTXt" + payload
    chunk += struct.pack(">I", zlib.crc32(b"zTXt" + payload) & 0xFFFFFFFF)
    return png[:33] + chunk + png[33:]  # after the IHDR chunk


def png_corrupt_idat() -> bytes:
    png = bytearray(_enc(_grad(64, 64), "PNG"))
    i = png.index(b"IDAT")
    for k in range(i + 20, i + 60):
        png[k] ^= 0x5A  # CRC now wrong and the zlib stream damaged
    return bytes(png)


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.txt", "hello")
    return buf.getvalue()


def _multipage_tiff() -> bytes:
    frames = [Image.new("RGB", (20, 20), c) for c in ((0, 0, 255), (255, 0, 0))]
    return _enc(frames[0], "TIFF", save_all=True, append_images=frames[1:])


def _rgba16_png() -> bytes:
    # Pillow cannot write 16-bit RGBA; build it by hand: IHDR bit depth 16, colour type 6.
    w, h = 6, 5
    raw = b"".join(b"\x00" + b"".join(struct.pack(">HHHH", 60000, 30000, 1000, 65535 if x > 2 else 0)
                                      for x in range(w)) for _ in range(h))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def extra_corpus() -> list[tuple[str, bytes, str]]:
    rng = np.random.default_rng(99)
    webp = _enc(_grad(120, 90), "WEBP", quality=80)
    gif = _enc(_grad(60, 40).convert("P"), "GIF", save_all=True,
               append_images=[_grad(60, 40).convert("P")] * 3)
    nan_tiff = np.full((10, 12), np.nan, np.float32)
    return [
        ("bomb_jpeg_65000x65000.jpg", jpeg_with_size(65000, 65000), "error"),
        ("bomb_gif_65535x65535.gif", gif_with_size(65535, 65535), "error"),
        ("png_text_bomb_64MB.png", png_text_bomb(), "either"),
        ("png_corrupt_idat.png", png_corrupt_idat(), "either"),
        ("truncated.webp", webp[: len(webp) // 2], "error"),
        ("truncated_animated.gif", gif[: len(gif) * 2 // 3], "either"),
        ("jpeg_soi_only.jpg", b"\xff\xd8\xff", "error"),
        ("png_magic_then_garbage.png", b"\x89PNG\r\n\x1a\n" + rng.bytes(500), "error"),
        ("svg_named.png", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "error"),
        ("zip_named.jpg", _zip_bytes(), "error"),
        ("wide_10000x1.png", _enc(_grad(10000, 1), "PNG"), "ok"),
        ("progressive.jpg", _enc(_grad(80, 60), "JPEG", progressive=True, quality=85), "ok"),
        ("exif_rot3.jpg", exif_rotated_jpeg(3), "ok"),
        ("exif_rot8.jpg", exif_rotated_jpeg(8), "ok"),
        ("exif_orientation_99.jpg", exif_rotated_jpeg(99), "ok"),
        ("grey16_1x1.png", _enc(Image.fromarray(np.array([[40000]], np.uint16)), "PNG"), "ok"),
        ("rgba16.png", _rgba16_png(), "ok"),
        ("multipage.tiff", _multipage_tiff(), "ok"),
        ("float_all_nan.tiff", _enc(Image.fromarray(nan_tiff), "TIFF"), "ok"),
        ("icon.ico", _enc(_grad(32, 32), "ICO"), "ok"),
    ]


def full_corpus() -> list[tuple[str, bytes, str]]:
    return [*bad_image_corpus(), *extra_corpus()]


MIME = {"png": "image/png", "jpg": "image/jpeg", "gif": "image/gif", "webp": "image/webp", "bmp": "image/bmp",
        "tiff": "image/tiff", "ico": "image/x-icon"}


def mime_of(name: str) -> str:
    return MIME.get(name.rsplit(".", 1)[-1], "application/octet-stream")
