"""Exact-answer tests for core.render.grids: normalisation modes, NaN/zero marking, tile layout, composition."""
from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from core.render import grids as G


def maps3() -> np.ndarray:
    """(3, 2, 2): channel 0 = 0..3, channel 1 all zero, channel 2 = -2, 2, NaN, 4."""
    return np.array([[[0, 1], [2, 3]], [[0, 0], [0, 0]], [[-2, 2], [np.nan, 4]]], np.float32)


def test_channel_maps_shapes():
    assert G.channel_maps(np.zeros((1, 5, 4, 3))).shape == (3, 5, 4)
    assert G.channel_maps(np.zeros((5, 4, 3))).shape == (3, 5, 4)
    assert G.channel_maps(np.zeros((1, 7))).shape == (7, 1, 1)
    assert G.channel_maps(np.zeros((7,))).shape == (7, 1, 1)
    assert G.channel_maps(np.zeros((1, 9, 2))).shape == (2, 1, 9)
    a = np.arange(24, dtype=np.float32).reshape(1, 2, 4, 3)
    assert_array_equal(G.channel_maps(a)[1], a[0, :, :, 1])
    with pytest.raises(ValueError):
        G.channel_maps(np.zeros((1, 2, 2, 2, 2)))


def test_channel_summary_ignores_nonfinite():
    s = G.channel_summary(maps3())
    assert_array_equal(s["min"], [0, 0, -2])
    assert_array_equal(s["max"], [3, 0, 4])
    assert_allclose(s["mean"], [1.5, 0, 4 / 3])
    assert_allclose(s["std"], [np.sqrt(1.25), 0, np.std([-2, 2, 4])])
    assert_array_equal(s["n_nonfinite"], [0, 0, 1])
    assert_array_equal(s["all_zero"], [False, True, False])
    assert G.channel_marks(s) == [None, "zero", "nonfinite"]


def test_channel_summary_of_finite_maps_equals_the_masked_path():
    finite = maps3()[:2]  # no NaN/Inf: the unmasked path
    fast = G.channel_summary(finite)
    masked = G.channel_summary(np.concatenate([finite, np.full((1, *finite.shape[1:]), np.nan, finite.dtype)]))
    for k, v in fast.items():
        assert v.dtype == masked[k].dtype, k
        assert_array_equal(v, masked[k][:2], err_msg=k)
    rng = np.random.default_rng(1)
    m = rng.normal(3.0, 0.5, (4, 9, 7)).astype(np.float32)
    m[2] = 0.0
    s = G.channel_summary(m)
    f = m.reshape(4, -1).astype(np.float64)
    assert_allclose(s["mean"], f.mean(axis=1), rtol=1e-12)
    assert_allclose(s["std"], f.std(axis=1), rtol=1e-12)
    assert_array_equal(s["min"], f.min(axis=1))
    assert_array_equal(s["all_zero"], [False, False, True, False])


def test_all_nan_channel_has_nan_stats_and_no_warning():
    m = np.full((1, 2, 2), np.nan, np.float32)
    with np.errstate(all="raise"):
        s = G.channel_summary(m)
    assert np.isnan(s["min"][0]) and np.isnan(s["max"][0]) and np.isnan(s["std"][0])
    assert s["n_nonfinite"][0] == 4
    assert G.channel_marks(s) == ["nonfinite"]


def test_value_ranges_per_channel_layer_fixed_and_diverging():
    s = G.channel_summary(maps3())
    lo, hi = G.value_ranges(s, "channel")
    assert_array_equal(lo, [0, 0, -2]) and assert_array_equal(hi, [3, 0, 4])
    lo, hi = G.value_ranges(s, "layer")
    assert_array_equal(lo, [-2, -2, -2]) and assert_array_equal(hi, [4, 4, 4])
    lo, hi = G.value_ranges(s, "fixed", fixed=(-10, 10))
    assert_array_equal(lo, [-10] * 3) and assert_array_equal(hi, [10] * 3)
    lo, hi = G.value_ranges(s, "layer", diverging=True)
    assert_array_equal(lo, [-4] * 3) and assert_array_equal(hi, [4] * 3)
    lo, hi = G.value_ranges(s, "channel", diverging=True)
    assert_array_equal(hi, [3, 0, 4]) and assert_array_equal(lo, [-3, 0, -4])
    with pytest.raises(ValueError):
        G.value_ranges(s, "fixed")
    with pytest.raises(ValueError):
        G.value_ranges(s, "nope")  # type: ignore[arg-type]


def test_normalise_per_channel_exact():
    m = maps3()
    lo, hi = G.value_ranges(G.channel_summary(m), "channel")
    x = G.normalise(m, lo, hi)
    assert_allclose(x[0], [[0, 1 / 3], [2 / 3, 1]])
    assert_array_equal(x[1], np.zeros((2, 2)))  # zero span -> 0
    assert_allclose(x[2], [[0, 4 / 6], [np.nan, 1]])


def test_normalise_layer_and_fixed_show_shrinkage():
    m = maps3()
    lo, hi = G.value_ranges(G.channel_summary(m), "layer")
    x = G.normalise(m, lo, hi)
    assert_allclose(x[0], [[2 / 6, 3 / 6], [4 / 6, 5 / 6]])
    assert_allclose(x[1], np.full((2, 2), 2 / 6))
    # a layer whose values shrank 10x looks dim on the fixed scale of its larger past
    lo, hi = G.value_ranges(G.channel_summary(m / 10), "fixed", fixed=(-2.0, 4.0))
    x = G.normalise(m / 10, lo, hi)
    assert_allclose(x[0], [[2 / 6, 2.1 / 6], [2.2 / 6, 2.3 / 6]], rtol=1e-6)


def test_normalise_clips_and_centres_diverging():
    m = np.array([[[-5.0, 0.0], [1.0, 5.0]]], np.float32)
    x = G.normalise(m, np.array([-1.0]), np.array([1.0]), diverging=True)
    assert_allclose(x[0], [[0, 0.5], [1, 1]])
    z = G.normalise(np.zeros((1, 1, 2), np.float32), np.array([0.0]), np.array([0.0]), diverging=True)
    assert_allclose(z, 0.5)


def test_apply_colormap_nan_is_marked_colour():
    lut = G.colormap("gray")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert_array_equal(lut[0], [0, 0, 0]) and assert_array_equal(lut[255], [255, 255, 255])
    rgb = G.apply_colormap(np.array([[0.0, 1.0, np.nan]]), lut)
    assert_array_equal(rgb[0], [[0, 0, 0], [255, 255, 255], list(G.NONFINITE_RGB)])


@pytest.mark.parametrize("name", G.COLORMAPS)
def test_colormaps_are_monotone_or_diverging(name):
    lut = G.colormap(name).astype(int)
    if name == "coolwarm":
        assert lut[0, 2] > lut[0, 0] and lut[-1, 0] > lut[-1, 2]  # blue -> red
        assert abs(int(lut[128].sum()) - 3 * 221) < 12  # near-white centre
    else:
        lum = lut @ np.array([0.299, 0.587, 0.114])
        assert np.all(np.diff(lum) >= -1.0)  # perceptually increasing
    with pytest.raises(ValueError):
        G.colormap("jet")


def test_channel_order_and_pages():
    s = {"min": np.zeros(4), "std": np.array([1.0, np.nan, 3.0, 2.0]), "mean": np.array([0.0, 5.0, -1.0, 1.0])}
    assert_array_equal(G.channel_order(s, "index"), [0, 1, 2, 3])
    assert_array_equal(G.channel_order(s, "std"), [2, 3, 0, 1])  # NaN last
    assert_array_equal(G.channel_order(s, "mean"), [1, 3, 0, 2])
    assert G.n_pages(130, 64) == 3 and G.n_pages(0, 64) == 1
    order = np.arange(130)
    assert_array_equal(G.page_slice(order, 2, 64), [128, 129])
    assert_array_equal(G.page_slice(order, 9, 64), [128, 129])  # clamped
    assert len(G.page_slice(order, 0, 64)) == 64


def test_tile_layout():
    assert G.grid_shape(10, 4) == (3, 4)
    assert G.grid_shape(3, 8) == (1, 3)
    assert G.grid_shape(0, 8) == (0, 0)
    assert G.tile_origin(0, 4, (10, 20), 2) == (2, 2)
    assert G.tile_origin(5, 4, (10, 20), 2) == (2 + 12, 2 + 22)
    assert G.upscale_factor(12, 12, 88) == 7
    assert G.upscale_factor(200, 100, 88) == 1
    up = G.upscale(np.arange(12, dtype=np.uint8).reshape(2, 2, 3), 2)
    assert up.shape == (4, 4, 3) and (up[:2, :2] == up[0, 0]).all()


def test_compose_grid_places_tiles_and_borders():
    tiles = np.stack([np.full((4, 5, 3), v, np.uint8) for v in (10, 20, 30)])
    img = G.compose_grid(tiles, ["", "", ""], [None, "nonfinite", "zero"], cols=2, pad=1, label_h=0, border=1)
    assert img.shape == (1 + 2 * (4 + 1), 1 + 2 * (5 + 1), 3)
    assert (img[1:5, 1:6] == 10).all()  # tile 0, no border
    assert_array_equal(img[1, 7], G.MARK_RGB["nonfinite"])  # tile 1 border (top-left)
    assert (img[2:4, 8:11] == 20).all()  # tile 1 inside
    assert_array_equal(img[6, 1], G.MARK_RGB["zero"])  # tile 2 in row 2
    assert_array_equal(img[0, 0], [255, 255, 255])  # padding


def test_grid_image_marks_nan_and_zero_channels():
    m = maps3()
    g = G.grid_image(m, mode="layer", cmap="viridis", tile_px=8, cols=3)
    assert g.channels == (0, 1, 2) and g.tile == (8, 8)
    assert g.pixels.dtype == np.uint8 and g.pixels.ndim == 3
    # the NaN pixel of channel 2 is magenta; its tile has a red border, the zero channel a grey one
    assert (g.pixels == np.array(G.NONFINITE_RGB, np.uint8)).all(axis=-1).any()
    assert (g.pixels == np.array(G.MARK_RGB["nonfinite"], np.uint8)).all(axis=-1).any()
    assert (g.pixels == np.array(G.MARK_RGB["zero"], np.uint8)).all(axis=-1).any()


def test_grid_image_pages_and_overlay():
    m = np.random.default_rng(0).standard_normal((70, 3, 3)).astype(np.float32)
    g = G.grid_image(m, per_page=64, page=1, labels=False, tile_px=6)
    assert g.channels == tuple(range(64, 70))
    base = np.full((3, 3, 3), 255, np.uint8)
    a = G.grid_image(m[:1], labels=False, tile_px=3, cmap="gray", mode="fixed", fixed=(100, 200))
    b = G.grid_image(m[:1], labels=False, tile_px=3, cmap="gray", mode="fixed", fixed=(100, 200), base=base, alpha=0.5)
    assert a.pixels[4, 4].tolist() == [0, 0, 0]  # everything below the range -> darkest
    assert b.pixels[4, 4].tolist() == [128, 128, 128]  # half-blended with white


def test_fixed_range_and_png_roundtrip():
    assert G.fixed_range([1.0, np.nan, -2.0], [3.0, 5.0, np.inf]) == (-2.0, 5.0)
    assert G.fixed_range([np.nan], [np.nan]) is None
    px = np.zeros((3, 4, 3), np.uint8)
    data = G.to_png(px)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image
    import io

    assert Image.open(io.BytesIO(data)).size == (4, 3)
    rng = np.random.default_rng(0)
    for img in (rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), rng.integers(0, 256, (5, 9), dtype=np.uint8),
                np.full((1, 1, 3), 255, np.uint8), rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)[:, ::2]):
        for level in (0, 1, 9):
            got = Image.open(io.BytesIO(G.to_png(img, compress_level=level)))
            got.load()  # decodes and checks every chunk's CRC
            np.testing.assert_array_equal(np.asarray(got), img)
    big = np.repeat(rng.integers(0, 256, (300, 40, 3), dtype=np.uint8), 8, axis=1)  # deflated in two halves
    assert big.nbytes >= G.PARALLEL_DEFLATE_BYTES
    for level in (1, 6):
        data = G.to_png(big, compress_level=level)
        got = Image.open(io.BytesIO(data))
        got.load()
        np.testing.assert_array_equal(np.asarray(got), big)
        idat = data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8]
        assert zlib.decompress(idat)[1:961] == big[0].tobytes()  # one valid zlib stream (header, Adler-32)
    rgba = rng.integers(0, 256, (4, 4, 4), dtype=np.uint8)  # other layouts go through Pillow
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(G.to_png(rgba)))), rgba)


def test_colorbar_and_stack():
    bar = G.colorbar("magma", -1.0, 2.0, width=100)
    assert bar.shape == (28, 100, 3)
    a, b = np.zeros((2, 3, 3), np.uint8), np.full((1, 5, 3), 7, np.uint8)
    s = G.stack([a, b], gap=2)
    assert s.shape == (5, 5, 3) and (s[:2, :3] == 0).all() and (s[:2, 3:] == 255).all()
    assert (s[2:4] == 255).all() and (s[4] == 7).all()


def _sprite(doc: str) -> np.ndarray:
    """The tiles' PNG of a ``tiles_html`` document, decoded: uint8 (n * H, W, 3)."""
    import base64
    import io
    import re

    from PIL import Image

    uri = re.search(r"url\(data:image/png;base64,([^)]+)\)", doc).group(1)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))))


def _cells(doc: str) -> list[str]:
    return doc.split('<div class="c"')[1:]


def test_tiles_html_sends_native_tiles_once_and_positions_each():
    tiles = np.random.default_rng(0).integers(0, 256, (5, 3, 4, 3), dtype=np.uint8)
    doc = G.tiles_html(tiles, 7, labels=[f"#{i}\nx" for i in range(5)], marks=[None, "zero", None, "nonfinite", None],
                       titles=[f"t{i}" for i in range(5)])
    assert_array_equal(_sprite(doc), tiles.reshape(15, 4, 3))  # exact pixels, one image
    assert doc.count("data:image/png") == 1
    assert "width:28px;height:21px" in doc and "0 0/28px 105px" in doc  # 4x3 tiles enlarged 7x, sprite scaled alike
    assert "image-rendering:pixelated" in doc
    cells = _cells(doc)
    assert len(cells) == 5
    for i, c in enumerate(cells):
        assert f"background-position:0 -{i * 21}px" in c and f'title="t{i}"' in c and f">#{i}\nx</div>" in c
    assert '<i class="m-zero">' in cells[1] and '<i class="m-nonfinite">' in cells[3] and "<i" not in cells[0]
    assert 'class="l bad"' in cells[3] and 'class="l"' in cells[0]  # a NaN tile's label is red
    assert 'class="b"' not in doc  # no overlay
    over = G.tiles_html(tiles, 7, base_uri="data:image/png;base64,AAAA", alpha=0.3)
    assert over.count('<i class="b"></i>') == 5 and "opacity:0.3" in over
    # the class names the content: another image, another class (how the browser test sees a new grid)
    cls = lambda d: d.split('<div class="ade-tiles ')[1].split('"')[0]  # noqa: E731
    assert cls(doc) == cls(G.tiles_html(tiles, 7, labels=[f"#{i}\nx" for i in range(5)]))
    assert cls(doc) != cls(G.tiles_html(tiles[::-1].copy(), 7)) and cls(doc) != cls(G.tiles_html(tiles, 6))


def test_grid_html_shows_the_grid_image_tiles():
    m = maps3()
    g = G.grid_html(m, mode="layer", cmap="viridis", tile_px=8, selected=0)
    assert g.channels == (0, 1, 2) and g.tile == (8, 8)
    ref = G.grid_image(m, mode="layer", cmap="viridis", tile_px=2, labels=False)  # k = 1: native tiles
    sprite = _sprite(g.html)
    for i in range(3):
        y, x = G.tile_origin(i, ref.cols, (2, 2), 4)
        if i != 1 and i != 2:  # the zero and NaN tiles carry a border in the raster image
            assert_array_equal(sprite[2 * i:2 * i + 2], ref.pixels[y:y + 2, x:x + 2])
    assert_array_equal(sprite[5, 0], G.NONFINITE_RGB)  # channel 2's NaN pixel (row 1, col 0) is magenta
    cells = _cells(g.html)
    assert ">#0\n0 / 3</div>" in cells[0] and '<i class="m-selected">' in cells[0]
    assert ">#1  all 0\n0 / 0</div>" in cells[1] and '<i class="m-zero">' in cells[1]
    assert ">#2  NaN/Inf\n-2 / 4</div>" in cells[2] and '<i class="m-nonfinite">' in cells[2]
    assert 'title="channel 2: min -2, max 4, mean 1.33, std 2.49, 1 NaN/Inf values"' in cells[2]
    assert "all zero" in cells[1]
    by_std = G.grid_html(m, sort="std", per_page=2, page=0)
    assert by_std.channels == (2, 0)  # std 2.49, 1.12, 0
    assert G.grid_html(m, sort="std", per_page=2, page=1).channels == (1,)
    assert G.grid_html(m, base_uri="data:image/png;base64,AAAA", alpha=0.5).html.count('<i class="b"></i>') == 3
    assert 'class="b"' not in G.grid_html(m, base_uri="data:image/png;base64,AAAA", alpha=0.0).html


def test_channel_view_html_and_colorbar_html():
    v = G.channel_view_html(np.arange(4, dtype=np.float32).reshape(2, 2), 0.0, 3.0, "gray", size=8)
    assert_array_equal(_sprite(v)[..., 0], [[0, 85], [170, 255]])
    assert "width:8px;height:8px" in v and 'class="ade-view ' in v
    bar = G.colorbar_html("viridis", -1.0, 2.5, caption="per layer")
    assert "rgb(68,1,84) 0%" in bar and "rgb(253,231,37) 100%" in bar and "rgb(33,145,140) 50%" in bar
    assert "<span>-1</span>" in bar and "<span>2.5</span>" in bar and ">per layer</div>" in bar
    div = G.colorbar_html("coolwarm", -2.0, 2.0)
    assert "<span>0</span>" in div and "rgb(221,221,221) 50%" in div  # white at exactly zero
    ch = G.colorbar_html("viridis", None, None, low_text="channel min", high_text="channel max")
    assert "<span>channel min</span>" in ch and "<span>0</span>" not in ch
    with pytest.raises(ValueError, match="unknown colormap"):
        G.colorbar_html("jet", 0.0, 1.0)
    # the gradient's stops are the lookup table's colours at their places (CSS interpolates linearly between
    # stops, as colormap does; the nearest of the 256 entries is within 1 of the stop)
    lut = G.colormap("magma").astype(int)
    anchors = G._ANCHORS["magma"]
    for i, c in enumerate(anchors):
        assert np.abs(lut[round(255 * i / (len(anchors) - 1))] - c).max() <= 1


def test_fmt_is_compact():
    assert [G.fmt(v) for v in (0.00137, -0.000744, 0.0216, 3.14159, -12345.0, 0.0)] == \
        ["1.4e-3", "-7.4e-4", "0.0216", "3.14", "-1.2e4", "0"]
    assert G.fmt(float("nan")) == "nan" and G.fmt(float("-inf")) == "-inf"
    assert G.tile_label(3, -1.0, 2.0, "zero") == "#3  all 0\n-1 / 2"


def _compose_reference(tiles: np.ndarray, labels: Sequence[str], marks: Sequence[str | None], cols: int,
                       pad: int = 4, label_h: int = 26, border: int = 2,
                       background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """core.render.grids.compose_grid as first written (cells filled, then transposed into place): the reference."""
    n, h, w, _ = tiles.shape
    rows, cols = G.grid_shape(n, cols)
    lines = max([lab.count("\n") + 1 for lab in labels] or [1])
    size = max(8, min(12, label_h // lines - 1))
    ch, cw = h + label_h, max(w, G.label_width(labels, size) if label_h > 0 else 0)
    # one (cell + trailing pad) block per tile, filled in one go, then laid out row-major
    cells = np.empty((max(rows * cols, 1), ch + pad, cw + pad, 3), np.uint8)
    cells[:] = background
    cells[:n, :h, :w] = tiles
    for kind, col in G.MARK_RGB.items():
        idx = [i for i in range(n) if marks[i] == kind]
        if idx and border > 0:
            b = min(border, h // 2, w // 2)
            c = cells[idx]
            c[:, :b, :w] = col
            c[:, h - b:h, :w] = col
            c[:, :h, :b] = col
            c[:, :h, w - b:w] = col
            cells[idx] = c
    grid = cells[:rows * cols].reshape(rows, cols, ch + pad, cw + pad, 3).transpose(0, 2, 1, 3, 4)
    out = np.empty((pad + rows * (ch + pad), pad + cols * (cw + pad), 3), np.uint8)
    out[:] = background
    out[pad:, pad:] = grid.reshape(rows * (ch + pad), cols * (cw + pad), 3)
    cell = (ch, cw)
    if label_h > 0:
        for i in range(n):
            y, x = G.tile_origin(i, cols, cell, pad)
            colour = G.MARK_RGB["nonfinite"] if marks[i] == "nonfinite" else (40, 40, 40)
            G.draw_text(out, y + h + 1, x + 1, labels[i], size, colour)
    return out



@pytest.mark.parametrize("n,cols,h,w,label_h", [(16, 8, 12, 12, 26), (13, 5, 7, 9, 26), (3, 8, 6, 4, 0),
                                                (1, 8, 1, 1, 26), (70, 8, 5, 5, 26), (0, 8, 4, 4, 26)])
def test_compose_grid_equals_the_reference(n, cols, h, w, label_h):
    """The in-place layout (tile rows copied through a strided view) gives the same bytes as the first version."""
    rng = np.random.default_rng(n)
    tiles = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    kinds = [None, "nonfinite", "zero", "selected", None]
    marks = [kinds[i % len(kinds)] for i in range(n)]
    labels = [G.tile_label(i, float(rng.normal()), float(rng.normal()) * 1e5, marks[i]) for i in range(n)]
    got = G.compose_grid(tiles, labels, marks, cols, label_h=label_h)
    assert_array_equal(got, _compose_reference(tiles, labels, marks, cols, label_h=label_h))
    strided = np.concatenate([tiles, tiles[..., :1]], axis=-1)[..., :3]  # a view, as apply_colormap returns
    assert_array_equal(G.compose_grid(strided, labels, marks, cols, label_h=label_h), got)


def test_apply_colormap_gathers_the_table_rows():
    lut = G.colormap("magma")
    x = np.array([[0.0, 1.0, np.nan], [0.5, 1.5, 0.2]], np.float32)
    out = G.apply_colormap(x, lut)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert_array_equal(out[0, 0], lut[0])
    assert_array_equal(out[0, 1], lut[255])
    assert_array_equal(out[1, 0], lut[128])
    assert_array_equal(out[1, 2], lut[51])
    assert_array_equal(out[0, 2], G.NONFINITE_RGB)
    assert_array_equal(out[1, 1], lut[255])  # clipped
