"""Tests for core.run.images: every awkward file is either loaded correctly or refused with ImageError."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from core.run.images import ImageError, describe_image, load_probe_image
from tests.badimages import bad_image_corpus, exif_rotated_jpeg, grey16_png
from tests.conftest import BUILTIN_PHOTOS, PHOTO_NAMES

CORPUS = bad_image_corpus()
BY_NAME = {name: data for name, data, _ in CORPUS}


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name,data,expected", CORPUS, ids=[c[0] for c in CORPUS])
@pytest.mark.parametrize("fit", ["crop", "pad"])
@pytest.mark.parametrize("channels", [1, 3])
def test_corpus_loaded_or_refused(name, data, expected, fit, channels):
    # Non-square target so a height/width mix-up shows.
    if expected == "ok":
        out = load_probe_image(data, (48, 64), channels=channels, fit=fit)
        assert out.shape == (48, 64, channels)
        assert out.dtype == np.uint8
        assert out.flags.c_contiguous
    else:
        with pytest.raises(ImageError) as e:
            load_probe_image(data, (48, 64), channels=channels, fit=fit)
        assert len(str(e.value)) > 20  # a sentence for the user, not a bare code


def test_error_messages_say_what_is_wrong():
    def msg(name: str, **kw) -> str:
        with pytest.raises(ImageError) as e:
            load_probe_image(BY_NAME[name], (64, 64), **kw)
        return str(e.value).lower()

    assert "empty" in msg("empty.png")
    assert "not an image" in msg("random_bytes.png")
    assert "truncated" in msg("truncated.jpg")
    assert "truncated" in msg("truncated.png")
    assert "decompression bomb" in msg("bomb_30000x30000.png")
    assert "8000×8000" in msg("bomb_8000x8000.png")
    assert "megapixel" in msg("photo.jpg", max_pixels=1000)
    assert "mb" in msg("photo.jpg", max_bytes=100)


def test_pillow_globals_untouched():
    before = Image.MAX_IMAGE_PIXELS
    for _, data, _ in CORPUS:
        try:
            load_probe_image(data, (16, 16))
        except ImageError:
            pass
    assert Image.MAX_IMAGE_PIXELS == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_paths_and_bytes_agree(tmp_path):
    p = tmp_path / "photo.jpg"
    p.write_bytes(BY_NAME["photo.jpg"])
    a = load_probe_image(BY_NAME["photo.jpg"], (32, 32))
    np.testing.assert_array_equal(load_probe_image(p, (32, 32)), a)
    np.testing.assert_array_equal(load_probe_image(str(p), (32, 32)), a)
    np.testing.assert_array_equal(load_probe_image(bytearray(BY_NAME["photo.jpg"]), (32, 32)), a)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ImageError, match="No image file"):
        load_probe_image(tmp_path / "nope.png", (8, 8))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty"):
        load_probe_image(empty, (8, 8))
    big = tmp_path / "big.png"
    big.write_bytes(BY_NAME["photo.jpg"])
    with pytest.raises(ImageError, match="MB"):
        load_probe_image(big, (8, 8), max_bytes=10)


def test_exif_orientation_applied():
    # Stored 80×40 with red left / blue right; orientation 6 turns it upright as 40×80, red on top.
    out = load_probe_image(exif_rotated_jpeg(6), (64, 64), fit="pad")
    top, bottom, side = out[4, 32].astype(int), out[59, 32].astype(int), out[32, 2].astype(int)
    assert top[0] > 200 and top[2] < 50
    assert bottom[2] > 200 and bottom[0] < 50
    np.testing.assert_array_equal(side, [128, 128, 128])  # letterbox left and right, not top/bottom


def test_sixteen_bit_scaled_by_actual_range():
    # Values 1000..3000 in a horizontal ramp: stretched to the full 0..255, not clipped to 255.
    out = load_probe_image(grey16_png(), (32, 64), channels=1, fit="crop")[..., 0]
    row = out[16].astype(int)
    assert row[0] <= 5 and row[-1] >= 250
    assert np.all(np.diff(row) >= -2)  # monotone up to resampling ripple


def test_float_image_scaled_and_nan_safe():
    out = load_probe_image(BY_NAME["float_F.tiff"], (32, 48), channels=1)
    assert out.min() <= 5 and out.max() >= 250


def test_one_pixel_fills_output():
    out = load_probe_image(BY_NAME["one_pixel.png"], (7, 5))
    assert out.shape == (7, 5, 3)
    assert np.all(out == np.array([10, 200, 30], np.uint8))


def test_extreme_aspect_crop_and_pad():
    # 4000×20 strip: crop shows its central 20×20 square; pad shows a thin band in the middle.
    crop = load_probe_image(BY_NAME["wide_4000x20.png"], (64, 64), fit="crop")
    assert abs(int(crop[:, :, 0].mean()) - 127) < 6  # red = x position, middle of the strip
    pad = load_probe_image(BY_NAME["wide_4000x20.png"], (64, 64), fit="pad")
    band = np.nonzero(np.any(pad != 128, axis=(1, 2)))[0]
    assert 1 <= len(band) <= 2 and 30 <= band[0] <= 33  # one pixel high (64 × 20/4000 rounds up to 1)
    assert pad[band[0], 0, 0] < 20 and pad[band[0], 63, 0] > 235


def test_alpha_composited_over_mid_grey():
    out = load_probe_image(BY_NAME["rgba.png"], (30, 40), fit="crop")
    np.testing.assert_array_equal(out[15, 0], [128, 128, 128])  # alpha 0
    np.testing.assert_allclose(out[15, -1].astype(int), [200, 0, 0], atol=3)  # alpha 255
    white = load_probe_image(BY_NAME["rgba.png"], (30, 40), background=(255, 255, 255))
    np.testing.assert_array_equal(white[15, 0], [255, 255, 255])


def test_palette_transparency_composited():
    out = load_probe_image(BY_NAME["palette_transparent.png"], (24, 24))
    np.testing.assert_array_equal(out[1, 1], [128, 128, 128])
    np.testing.assert_array_equal(out[12, 12], [0, 255, 0])


def test_animated_gif_first_frame():
    out = load_probe_image(BY_NAME["animated.gif"], (16, 16))
    assert np.all(out[..., 0] > 240) and np.all(out[..., 1:] < 15)
    assert describe_image(BY_NAME["animated.gif"])["frames"] == 4


def test_grey_replicated_to_three_channels_and_rgb_to_luma():
    grey = load_probe_image(BY_NAME["grey.png"], (30, 30), channels=3)
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 1] = 200
    luma = load_probe_image(_png(rgb), (4, 4), channels=1)
    assert luma.shape == (4, 4, 1)
    assert abs(int(luma[0, 0, 0]) - round(200 * 0.587)) <= 1  # ITU-R 601 luma


def test_crop_keeps_centre():
    a = np.zeros((10, 30, 3), np.uint8)
    a[:, 10:20] = 255  # the central square is white, the sides black
    out = load_probe_image(_png(a), (10, 10), fit="crop")
    assert out.min() >= 250


def test_large_jpeg_uses_draft_and_stays_correct():
    a = np.zeros((1200, 2400, 3), np.uint8)
    a[:, :, 2] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90)
    out = load_probe_image(buf.getvalue(), (64, 64))
    assert out.shape == (64, 64, 3)
    assert np.all(out[..., 2] > 240) and np.all(out[..., 0] < 15)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # corrupted headers may declare huge sizes
@pytest.mark.parametrize("seed", range(40))
def test_corrupted_bytes_never_crash(seed):
    rng = np.random.default_rng(seed)
    base = bytearray(BY_NAME["photo.jpg"] if seed % 2 else BY_NAME["image.bmp"] if seed % 3 else _png(
        rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)))
    for pos in rng.integers(0, len(base), 1 + seed % 8):
        base[pos] = int(rng.integers(0, 256))
    if seed % 5 == 0:
        base = base[: int(rng.integers(1, len(base)))]
    try:
        out = load_probe_image(bytes(base), (16, 16))
    except ImageError:
        return
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_describe_image():
    d = describe_image(BY_NAME["cmyk.jpg"])
    assert d["format"] == "JPEG" and d["mode"] == "CMYK"
    assert d["size"] == (48, 32) and d["width"] == 48 and d["height"] == 32 and d["frames"] == 1
    assert describe_image(BY_NAME["bomb_8000x8000.png"])["size"] == (8000, 8000)  # header only
    with pytest.raises(ImageError):
        describe_image(BY_NAME["random_bytes.png"])


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError):
        load_probe_image(BY_NAME["photo.jpg"], (0, 10))
    with pytest.raises(ValueError):
        load_probe_image(BY_NAME["photo.jpg"], (10, 10), channels=4)
    with pytest.raises(ValueError):
        load_probe_image(BY_NAME["photo.jpg"], (10, 10), fit="stretch")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", PHOTO_NAMES)
def test_real_photos(name):
    path = BUILTIN_PHOTOS / name
    assert path.is_file(), f"built-in photo {path} is missing (it ships with the repository)"
    info = describe_image(path)
    assert info["width"] > 0 and info["height"] > 0
    for size in [(64, 64), (224, 224), (48, 80)]:
        for fit in ("crop", "pad"):
            out = load_probe_image(path, size, fit=fit)
            assert out.shape == (*size, 3) and out.dtype == np.uint8
            assert out.std() > 5  # real content, not a flat fill
    grey = load_probe_image(path, (64, 64), channels=1)
    assert grey.shape == (64, 64, 1)
