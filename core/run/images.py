"""Probe image loading that refuses bad input with a clear ImageError and never crashes otherwise."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
#: Memory an image may need to decode and convert, checked from its header before decoding.
DEFAULT_DECODE_BUDGET = 192 * 1024 * 1024
#: Bytes per pixel that decoding and converting each mode touches at once: the decoded
#: pixels, plus for high-depth greyscale the float64 copies `_high_depth_to_l` makes.
_WORK_BYTES_PER_PIXEL = {"1": 2, "L": 2, "P": 5, "LA": 6, "PA": 6, "RGB": 6, "YCbCr": 6, "LAB": 6, "HSV": 6,
                         "RGBA": 12, "RGBa": 12, "RGBX": 8, "CMYK": 8, "La": 6}
_HIGH_DEPTH_BYTES_PER_PIXEL = 32
# Transparent pixels are composited over mid-grey: neutral under every preprocessing kind
# (it maps to ~0 for scale_pm1 / ImageNet mean-std), so transparency adds no strong edge.
DEFAULT_BACKGROUND: tuple[int, int, int] = (128, 128, 128)

Source = bytes | bytearray | memoryview | str | os.PathLike
Fit = Literal["resize", "crop", "pad"]
FITS: tuple[str, ...] = ("resize", "crop", "pad")


class ImageError(ValueError):
    """A probe image cannot be used; the message says what is wrong and what to do next."""


def _read_source(src: Source, max_bytes: int) -> tuple[bytes, str]:
    """Return (raw bytes, a short name for messages); refuse empty, missing or oversized input."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        data, name = bytes(src), "the uploaded image"
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        name = f"'{path.name}'"
        if not path.is_file():
            raise ImageError(f"No image file at {path}. Check the path and try again.")
        try:
            size = path.stat().st_size
            if size > max_bytes:
                raise ImageError(_too_many_bytes(name, size, max_bytes))
            data = path.read_bytes()
        except OSError as e:
            raise ImageError(f"Could not read {path}: {e.strerror or e}. Check the file's permissions.") from e
    else:
        raise ImageError(f"Expected image bytes or a file path, got {type(src).__name__}.")
    if len(data) == 0:
        raise ImageError(f"{name.capitalize()} is empty (0 bytes). Upload a JPEG, PNG or WebP image.")
    if len(data) > max_bytes:
        raise ImageError(_too_many_bytes(name, len(data), max_bytes))
    return data, name


def _too_many_bytes(name: str, size: int, max_bytes: int) -> str:
    return (
        f"{name.capitalize()} is {size / 2**20:.1f} MB, more than the {max_bytes / 2**20:.0f} MB limit. "
        "Resize or re-compress it (a few megapixels is plenty) and try again."
    )


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open (header only) and check the declared size before any pixel is decoded."""
    try:
        im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own limit fired while reading the header (the warning only raises
        # when the caller turned warnings into errors; Pillow's globals stay untouched).
        raise ImageError(
            f"{name.capitalize()} declares an enormous size ({e}). It looks like a decompression bomb "
            "or a huge scan; use an image under a few megapixels."
        ) from e
    except UnidentifiedImageError as e:
        raise ImageError(
            f"{name.capitalize()} is not an image format this app can read (or the file is corrupt). "
            "Upload a JPEG, PNG, WebP, BMP, GIF or TIFF file."
        ) from e
    except Exception as e:  # noqa: BLE001 - header parsers raise many types on garbage
        raise ImageError(
            f"{name.capitalize()} could not be opened ({type(e).__name__}: {e}). "
            "The file is probably corrupt; re-export it as PNG or JPEG."
        ) from e
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ImageError(f"{name.capitalize()} declares an empty size {w}×{h}; the file is corrupt.")
    if w * h > max_pixels:
        raise ImageError(
            f"{name.capitalize()} declares {w}×{h} = {w * h / 1e6:.0f} megapixels, more than the "
            f"{max_pixels / 1e6:.0f} megapixel limit (it may be a decompression bomb). "
            "Use a smaller image."
        )
    return im


def decode_cost(im: Image.Image) -> int:
    """Bytes decoding and converting ``im`` (at its current, possibly drafted, size) needs at once."""
    w, h = im.size
    mode = im.mode
    per_px = _HIGH_DEPTH_BYTES_PER_PIXEL if mode.startswith("I") or mode == "F" else _WORK_BYTES_PER_PIXEL.get(mode, 16)
    return w * h * per_px


def _check_budget(im: Image.Image, name: str, budget: int) -> None:
    cost = decode_cost(im)
    if cost > budget:
        w, h = im.size
        raise ImageError(
            f"{name.capitalize()} ({w}×{h}, mode {im.mode}) would need about {cost / 2**20:.0f} MB to decode, "
            f"more than the {budget / 2**20:.0f} MB allowed for one image. Use a smaller or 8-bit image."
        )


def _decode(im: Image.Image, name: str, draft_size: int | None, budget: int = DEFAULT_DECODE_BUDGET) -> Image.Image:
    """Force a full decode of the first frame so truncated or corrupt data raises here.

    The memory it needs (pixels × bytes per pixel of the mode) is checked against ``budget`` first.
    """
    # Relies on Pillow's default ImageFile.LOAD_TRUNCATED_IMAGES = False, which this module never
    # changes; code that sets it globally makes truncated files decode silently with grey fill.
    try:
        if draft_size is not None and im.format == "JPEG":
            # JPEG can decode at 1/2, 1/4, 1/8 scale: much faster for big photos, still >= target.
            im.draft(im.mode if im.mode in ("RGB", "L") else None, (draft_size, draft_size))
        _check_budget(im, name, budget)
        im.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name.capitalize()} is too large to decode safely ({e}). Use a smaller image.") from e
    except MemoryError as e:
        raise ImageError(f"{name.capitalize()} needs more memory to decode than is available. Use a smaller image.") from e
    except Exception as e:  # noqa: BLE001 - decoders raise OSError, SyntaxError, ValueError, struct.error...
        raise ImageError(
            f"{name.capitalize()} is truncated or corrupt and cannot be decoded ({type(e).__name__}: {e}). "
            "Re-download or re-export the image and try again."
        ) from e
    return im


def _exif_upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block leaves the image as stored."""
    try:
        out = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - broken EXIF should not lose an otherwise fine image
        return im
    return im if out is None else out


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit int / float greyscale -> 8-bit L, stretched over the actual value range.

    Clipping would turn a typical 16-bit image (values in the thousands) white; scaling by the
    dtype maximum would turn a 12-bit image nearly black. A constant image keeps its value, clipped
    to 0..255. NaN and inf pixels become the minimum.
    """
    a = np.asarray(im).astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return Image.fromarray(np.zeros(a.shape, np.uint8), mode="L")
    lo, hi = float(a[finite].min()), float(a[finite].max())
    a = np.where(finite, a, lo)
    if hi > lo:
        out = (a - lo) * (255.0 / (hi - lo))
    else:
        out = np.full(a.shape, np.clip(lo, 0.0, 255.0))
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), mode="L")


def _to_l_or_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any Pillow mode -> 'L' or 'RGB'; transparency is composited over ``background``."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_l(im)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if mode in ("L", "RGB"):
        return im
    if mode == "1":
        return im.convert("L")
    return im.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV, RGBX


def _fit(im: Image.Image, height: int, width: int, fit: Fit, background: tuple[int, int, int]) -> Image.Image:
    """Centre-crop to the target aspect ratio (crop) or letterbox into it (pad), then resize to (width, height).

    Crop keeps the central region with the target's aspect ratio: a 4000×20 strip becomes its
    central 20×20 square, upscaled. Pad keeps everything: the same strip becomes a band at least
    one pixel high across the middle, the rest filled with ``background``.
    """
    w, h = im.size
    resample = Image.Resampling.LANCZOS
    if fit == "crop":
        target = width / height
        if w / h > target:  # too wide
            cw, ch = max(1, min(w, round(h * target))), h
        else:
            cw, ch = w, max(1, min(h, round(w / target)))
        left, top = (w - cw) // 2, (h - ch) // 2
        return im.resize((width, height), resample, box=(left, top, left + cw, top + ch), reducing_gap=3.0)
    scale = min(width / w, height / h)
    nw, nh = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    small = im.resize((nw, nh), resample, reducing_gap=3.0)
    fill: Any = background if im.mode == "RGB" else int(round(np.mean(background)))
    canvas = Image.new(im.mode, (width, height), fill)
    canvas.paste(small, ((width - nw) // 2, (height - nh) // 2))
    return canvas


def load_probe_image(
    src: Source,
    size: tuple[int, int],
    channels: int = 3,
    fit: Fit = "crop",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    *,
    background: tuple[int, int, int] = DEFAULT_BACKGROUND,
    decode_budget: int = DEFAULT_DECODE_BUDGET,
    as_float: bool = False,
) -> np.ndarray:
    """Decode, orient, convert and resize a probe image -> uint8 (H, W, channels) with (H, W) = ``size``.

    ``src`` is raw bytes (an upload) or a path. Any Pillow-readable format works (first frame of
    animations); alpha is composited over ``background`` (mid-grey by default); 16-bit and float
    greyscale are stretched over their actual value range; EXIF orientation is applied. ``fit``:
    ``resize`` (bilinear stretch, ``tf.image.resize``: what Keras input pipelines such as
    ``image_dataset_from_directory`` do), ``crop`` (centre-crop to the target aspect, Lanczos) or
    ``pad`` (letterbox with ``background``). ``as_float``: float32 in 0..255 instead of uint8, so
    that ``resize`` is exactly ``tf.image.resize``'s output (uint8 rounds it).
    Anything unusable (empty, not an image, truncated, too many bytes, declared size over
    ``max_pixels``, more than ``decode_budget`` bytes to decode) raises :class:`ImageError` with a message meant for the user.
    """
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"size must be two positive ints (height, width), got {size!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")

    data, name = _read_source(src, max_bytes)
    im = _open(data, name, max_pixels)
    try:
        # resize must see every pixel, as tf.image.resize in a Keras input pipeline does: no JPEG draft
        im = _decode(im, name, draft_size=None if fit == "resize" else max(height, width), budget=decode_budget)
        try:
            im = _exif_upright(im)
            im = _to_l_or_rgb(im, background)
            im = im.convert("L") if channels == 1 else im.convert("RGB")
            if fit == "resize":
                out = bilinear_resize(np.asarray(im, dtype=np.uint8), height, width)
                out = out if as_float else np.clip(np.rint(out), 0, 255).astype(np.uint8)
            else:
                im = _fit(im, height, width, fit, background)
                out = np.asarray(im, dtype=np.float32 if as_float else np.uint8)
        except MemoryError as e:
            raise ImageError(f"{name.capitalize()} needs more memory than is available. Use a smaller image.") from e
        except ImageError:
            raise
        except Exception as e:  # noqa: BLE001 - last line of defence: never crash the page
            raise ImageError(
                f"{name.capitalize()} could not be converted ({type(e).__name__}: {e}). "
                "Re-export it as an RGB PNG or JPEG and try again."
            ) from e
    finally:
        im.close()
    if channels == 1:
        out = out[:, :, None]
    return np.ascontiguousarray(out)


def bilinear_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 (H, W, C) -> float32 (height, width, C): ``tf.image.resize`` bilinear, bit for bit (it is that call)."""
    import tensorflow as tf  # local: only this fit needs TensorFlow

    if image.ndim == 2:
        return bilinear_resize(image[:, :, None], height, width)[:, :, 0]
    if image.shape[:2] == (height, width):
        return image.astype(np.float32)
    return tf.image.resize(image[None], (height, width), method="bilinear").numpy()[0].astype(np.float32)


def default_fit(manifest_raw: dict[str, Any], imported: bool) -> str:
    """The run's probe fitting: ``input.fit`` in the manifest (or the run's own settings), else ``resize``
    for an imported run (what Keras pipelines do) and ``crop`` for one trained here."""
    fit = (manifest_raw.get("input") or {}).get("fit") if isinstance(manifest_raw, dict) else None
    return fit if fit in FITS else ("resize" if imported else "crop")


def describe_image(src: Source, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Header facts for display, without decoding pixels: format, mode, size (w, h), width, height, frames, bytes."""
    data, name = _read_source(src, max_bytes)
    # Describe even oversized images (the user should see why they are refused).
    im = _open(data, name, max_pixels=2**62)
    try:
        try:
            frames = int(getattr(im, "n_frames", 1))
        except Exception:  # noqa: BLE001 - counting frames seeks through the file, which may be corrupt
            frames = 1
        w, h = im.size
        return {
            "format": im.format or "unknown",
            "mode": im.mode,
            "size": (w, h),
            "width": w,
            "height": h,
            "frames": frames,
            "bytes": len(data),
        }
    finally:
        im.close()


def resize_rgb(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """uint8 (H, W, C) image (C 1 or 3) -> uint8 (h, w, 3), bilinear."""
    if img.ndim == 3 and img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if img.shape[:2] == (h, w):
        return img.astype(np.uint8)
    return np.asarray(Image.fromarray(img.astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR))


def fit_probe(image: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 (H, W, C) image -> uint8 (h, w, c) for another run's input ``shape`` (bilinear; grey = channel mean)."""
    h, w, c = shape
    img = np.asarray(image, np.uint8)
    if img.shape == (h, w, c):
        return img
    rgb = resize_rgb(img, h, w)
    if c == 1:
        return np.clip(rgb.astype(np.float32).mean(axis=-1, keepdims=True) + 0.5, 0, 255).astype(np.uint8)
    if c != 3:
        raise ValueError(f"cannot feed an RGB image to an input with {c} channels")
    return rgb
