"""Channel grids: one tile per channel of a layer, as HTML of native-size tiles or one labelled uint8 RGB image."""
from __future__ import annotations

import base64
import html
import math
import zlib
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

from core.render.raster import PARALLEL_DEFLATE_BYTES, draw_text, stack, text_mask, to_png
from core.run.images import resize_rgb

# re-exported: callers draw and encode grids through this module
__all__ = ["PARALLEL_DEFLATE_BYTES", "draw_text", "stack", "text_mask", "to_png"]

Mode = Literal["channel", "layer", "fixed"]
SortKey = Literal["index", "std", "mean"]

#: Anchor colours (9 evenly spaced stops) of each colormap; interpolated to a 256-entry table.
_ANCHORS: dict[str, list[tuple[int, int, int]]] = {
    "viridis": [(68, 1, 84), (71, 44, 122), (59, 82, 139), (44, 113, 142), (33, 145, 140),
                (39, 173, 129), (94, 201, 98), (170, 220, 50), (253, 231, 37)],
    "magma": [(0, 0, 4), (28, 16, 68), (79, 18, 123), (129, 37, 129), (181, 54, 122),
              (229, 80, 100), (251, 135, 97), (254, 194, 135), (252, 253, 191)],
    "gray": [(0, 0, 0), (255, 255, 255)],
    "coolwarm": [(59, 76, 192), (98, 130, 234), (141, 176, 254), (184, 208, 249), (221, 221, 221),
                 (245, 196, 173), (244, 154, 123), (222, 96, 77), (180, 4, 38)],
}
COLORMAPS: tuple[str, ...] = tuple(_ANCHORS)
#: Colormaps whose scale is symmetric around 0 (the centre colour means exactly zero).
DIVERGING: frozenset[str] = frozenset({"coolwarm"})
NONFINITE_RGB = (255, 0, 255)  # pixels that are NaN or +-Inf
MARK_RGB = {"nonfinite": (220, 30, 30), "zero": (150, 150, 150), "selected": (255, 170, 0)}
MAX_WIDTH = 1400  # Streamlit re-encodes images wider than 1460 px; stay below


@dataclass(frozen=True)
class GridImage:
    """A composed grid: ``pixels`` uint8 (H, W, 3); ``channels[i]`` is shown in tile i (row-major)."""

    pixels: np.ndarray
    channels: tuple[int, ...]
    cols: int
    tile: tuple[int, int]  # tile pixel size (height, width) without label strip


def colormap(name: str) -> np.ndarray:
    """Lookup table of colormap ``name``: uint8 (256, 3)."""
    if name not in _ANCHORS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {list(COLORMAPS)}")
    a = np.asarray(_ANCHORS[name], np.float64)
    xs = np.linspace(0.0, 1.0, len(a))
    t = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(t, xs, a[:, k]) for k in range(3)], axis=1).round().astype(np.uint8)


def channel_maps(a: np.ndarray) -> np.ndarray:
    """A layer's output for ONE image as float32 (C, H, W).

    Accepts (H, W, C), (1, H, W, C), (L, C) / (1, L, C) (1-D maps -> (C, 1, L)) and
    vectors (C,) / (1, C) (-> (C, 1, 1)).
    """
    a = np.asarray(a)
    if a.ndim >= 2 and a.shape[0] == 1 and a.ndim in (2, 3, 4):
        a = a[0]
    if a.ndim == 1:
        return a.astype(np.float32).reshape(-1, 1, 1)
    if a.ndim == 2:
        return np.ascontiguousarray(a.T.astype(np.float32)[:, None, :])
    if a.ndim == 3:
        return np.ascontiguousarray(np.moveaxis(a, -1, 0).astype(np.float32))
    raise ValueError(f"cannot show an array of shape {a.shape} as channel tiles")


def channel_summary(maps: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics over finite values of maps (C, H, W) -> {name: (C,)}.

    min, max, mean, std (NaN for a channel without finite values), n_nonfinite (int),
    all_zero (bool: every value is exactly 0).
    """
    c = maps.shape[0]
    raw = maps.reshape(c, -1)
    if raw.shape[1] and np.isfinite(raw).all():  # the usual case: the same sums without masking
        flat = raw.astype(np.float64)
        mean = flat.mean(axis=1)
        dev = flat - mean[:, None]
        np.square(dev, out=dev)
        return {"min": flat.min(axis=1), "max": flat.max(axis=1), "mean": mean, "std": np.sqrt(dev.mean(axis=1)),
                "n_nonfinite": np.zeros(c, np.int64), "all_zero": ~raw.any(axis=1)}
    flat = raw.astype(np.float64)
    fin = np.isfinite(flat)
    n = fin.sum(axis=1)
    none = n == 0
    z = np.where(fin, flat, 0.0)
    mean = np.where(none, np.nan, z.sum(axis=1) / np.maximum(n, 1))
    var = np.where(fin, (flat - mean[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(n, 1)
    mn = np.where(fin, flat, np.inf).min(axis=1) if flat.shape[1] else np.full(c, np.inf)
    mx = np.where(fin, flat, -np.inf).max(axis=1) if flat.shape[1] else np.full(c, -np.inf)
    return {
        "min": np.where(none, np.nan, mn), "max": np.where(none, np.nan, mx),
        "mean": mean, "std": np.where(none, np.nan, np.sqrt(var)),
        "n_nonfinite": (~fin).sum(axis=1).astype(np.int64),
        "all_zero": (flat == 0).all(axis=1) if flat.shape[1] else np.zeros(c, bool),
    }


def channel_marks(summary: dict[str, np.ndarray]) -> list[str | None]:
    """Per channel: 'nonfinite' (any NaN/Inf), 'zero' (all exactly 0) or None."""
    return ["nonfinite" if nf > 0 else ("zero" if z else None)
            for nf, z in zip(summary["n_nonfinite"], summary["all_zero"])]


def value_ranges(summary: dict[str, np.ndarray], mode: Mode, fixed: tuple[float, float] | None = None,
                 diverging: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Colour-scale limits (lo, hi), each (C,), for the given normalisation ``mode``.

    channel: each channel's own min..max; layer: min..max over all channels at this
    checkpoint; fixed: ``fixed`` (e.g. the layer's range over every checkpoint).
    ``diverging`` makes the scale symmetric around 0: -m..m with m = max(|lo|, |hi|).
    Channels (or layers) without finite values get NaN limits.
    """
    mn, mx = summary["min"], summary["max"]
    c = len(mn)
    if mode == "channel":
        lo, hi = mn.astype(np.float64), mx.astype(np.float64)
    elif mode == "layer":
        ok = np.isfinite(mn)
        l, h = (float(mn[ok].min()), float(mx[ok].max())) if ok.any() else (math.nan, math.nan)
        lo, hi = np.full(c, l), np.full(c, h)
    elif mode == "fixed":
        if fixed is None:
            raise ValueError("mode 'fixed' needs the fixed (lo, hi) range")
        lo, hi = np.full(c, float(fixed[0])), np.full(c, float(fixed[1]))
    else:
        raise ValueError(f"mode must be 'channel', 'layer' or 'fixed', got {mode!r}")
    if diverging:
        m = np.maximum(np.abs(lo), np.abs(hi))
        lo, hi = -m, m
    return lo, hi


def normalise(maps: np.ndarray, lo: np.ndarray, hi: np.ndarray, diverging: bool = False) -> np.ndarray:
    """maps (C, H, W) -> float32 (C, H, W) in [0, 1] with lo -> 0, hi -> 1 per channel; NaN stays NaN.

    Non-finite inputs become NaN. A zero or undefined span maps to 0.5 when
    ``diverging`` (the centre, i.e. zero) and to 0 otherwise.
    """
    lo = np.asarray(lo, np.float64).reshape(-1, 1, 1)
    hi = np.asarray(hi, np.float64).reshape(-1, 1, 1)
    span = hi - lo
    good = np.isfinite(span) & (span > 0)
    with np.errstate(all="ignore"):
        x = np.where(good, (maps.astype(np.float64) - lo) / np.where(good, span, 1.0), 0.5 if diverging else 0.0)
    x = np.clip(x, 0.0, 1.0)
    x[~np.isfinite(maps)] = np.nan
    return x.astype(np.float32)


def apply_colormap(x01: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (any shape S, NaN allowed) -> uint8 (*S, 3) through ``lut`` (256, 3).

    The result may be a strided view (of an (*S, 4) array): each pixel is gathered as one
    4-byte word instead of a row of three bytes (bench/bench_internals.py times both).
    """
    nan = ~np.isfinite(x01)
    idx = np.clip(np.nan_to_num(x01, nan=0.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    lut4 = np.zeros((256, 4), np.uint8)
    lut4[:, :3] = lut
    out = np.reshape(lut4.view(np.uint32)[idx, 0].view(np.uint8), (*idx.shape, 4))[..., :3]
    out[nan] = NONFINITE_RGB
    return out


def channel_order(summary: dict[str, np.ndarray], key: SortKey = "index", descending: bool = True) -> np.ndarray:
    """Channel indices sorted by ``key`` (index ascending; std/mean descending by default, NaN last)."""
    c = len(summary["min"])
    if key == "index":
        return np.arange(c)
    if key not in ("std", "mean"):
        raise ValueError(f"sort key must be 'index', 'std' or 'mean', got {key!r}")
    v = np.asarray(summary[key], np.float64)
    v = -v if descending else v
    v = np.where(np.isfinite(v), v, np.inf)
    return np.argsort(v, kind="stable")


def n_channels(shape: Sequence[int]) -> int:
    """Tiles ``channel_maps`` makes of one image's tap of ``shape`` (without the batch axis): its last axis."""
    return int(shape[-1]) if len(shape) else 1


def n_pages(n: int, per_page: int) -> int:
    """Number of pages of ``per_page`` tiles for ``n`` channels (at least 1)."""
    return max(1, math.ceil(n / max(1, per_page)))


def page_slice(order: np.ndarray, page: int, per_page: int) -> np.ndarray:
    """The channels of page ``page`` (0-based, clamped into range) of ``order``."""
    page = min(max(0, page), n_pages(len(order), per_page) - 1)
    return order[page * per_page:(page + 1) * per_page]


def grid_shape(n: int, cols: int) -> tuple[int, int]:
    """(rows, cols) of a row-major grid holding ``n`` tiles at most ``cols`` wide."""
    if n <= 0:
        return 0, 0
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def tile_origin(i: int, cols: int, cell: tuple[int, int], pad: int) -> tuple[int, int]:
    """Top-left (y, x) pixel of tile ``i`` in a row-major grid of cells (h, w) separated by ``pad``."""
    r, c = divmod(i, cols)
    return pad + r * (cell[0] + pad), pad + c * (cell[1] + pad)


def upscale_factor(h: int, w: int, target: int) -> int:
    """Integer nearest-neighbour factor bringing max(h, w) to about ``target`` pixels (>= 1)."""
    return max(1, int(round(target / max(h, w, 1))))


def upscale(img: np.ndarray, k: int) -> np.ndarray:
    """Nearest-neighbour upscale of an RGB image (..., H, W, 3) by integer ``k`` along H and W."""
    if k == 1:
        return img
    return np.repeat(np.repeat(img, k, axis=-3), k, axis=-2)


def blend(rgb: np.ndarray, base: np.ndarray, alpha: float) -> np.ndarray:
    """(1 - alpha) * rgb + alpha * base for uint8 (..., 3) arrays broadcastable to each other."""
    if alpha <= 0:
        return rgb
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * base.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def fmt(v: float) -> str:
    """Compact number for tile labels: 3 significant digits, 1.4e-3 style below 0.01 and from 1e4, 'nan' for NaN."""
    v = float(v)  # a Python float: quicker to test and format than a numpy scalar
    if not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    a = abs(v)
    if a != 0 and (a < 1e-2 or a >= 1e4):
        mant, exp = f"{v:.1e}".split("e")
        return f"{mant}e{int(exp)}"
    return f"{v:.3g}"


def tile_label(channel: int, vmin: float, vmax: float, mark: str | None) -> str:
    """Two lines under a tile: channel index (+ the mark) and the channel's min / max."""
    tag = {"nonfinite": "  NaN/Inf", "zero": "  all 0"}.get(mark or "", "")
    return f"#{channel}{tag}\n{fmt(vmin)} / {fmt(vmax)}"


def label_width(labels: Sequence[str], font_size: int) -> int:
    """Pixel width of the widest line among ``labels`` in the label font."""
    if not labels:
        return 0
    return max(text_mask(line, font_size).shape[1] for lab in labels for line in lab.split("\n")) + 2


def compose_grid(tiles: np.ndarray, labels: Sequence[str], marks: Sequence[str | None], cols: int,
                 pad: int = 4, label_h: int = 26, border: int = 2,
                 background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Tiles uint8 (N, h, w, 3) -> one uint8 image; each tile has a label strip (``label_h`` px) under it.

    Cells are as wide as the widest label when that is wider than a tile. A tile whose mark
    is set ('nonfinite', 'zero', 'selected') gets a coloured border of ``border`` pixels.
    """
    n, h, w, _ = tiles.shape
    rows, cols = grid_shape(n, cols)
    lines = max([lab.count("\n") + 1 for lab in labels] or [1])
    size = max(8, min(12, label_h // lines - 1))
    ch, cw = h + label_h, max(w, label_width(labels, size) if label_h > 0 else 0)
    out = np.empty((pad + rows * (ch + pad), pad + cols * (cw + pad), 3), np.uint8)
    out[:] = background
    if n == 0:
        return out
    # (rows, cell h + pad, cols, (cell w + pad) * 3) view of the image: tiles are copied in place
    # one pixel row (w * 3 contiguous bytes) at a time
    rows3 = np.reshape(out[pad:, pad:], (rows, ch + pad, cols, (cw + pad) * 3), copy=False)
    t3 = np.reshape(tiles, (n, h, w * 3))
    full = n // cols
    rows3[:full, :h, :, :w * 3] = t3[:full * cols].reshape(full, cols, h, w * 3).transpose(0, 2, 1, 3)
    if n > full * cols:
        rows3[full, :h, :n - full * cols, :w * 3] = t3[full * cols:].transpose(1, 0, 2)
    cells = np.reshape(out[pad:, pad:], (rows, ch + pad, cols, cw + pad, 3), copy=False)
    b = min(border, h // 2, w // 2)
    for kind, col in MARK_RGB.items():
        idx = np.array([i for i in range(n) if marks[i] == kind], np.intp)
        if len(idx) and b > 0:
            r, c = np.divmod(idx, cols)
            cells[r, :b, c, :w] = col
            cells[r, h - b:h, c, :w] = col
            cells[r, :h, c, :b] = col
            cells[r, :h, c, w - b:w] = col
    cell = (ch, cw)
    if label_h > 0:
        for i in range(n):
            y, x = tile_origin(i, cols, cell, pad)
            colour = MARK_RGB["nonfinite"] if marks[i] == "nonfinite" else (40, 40, 40)
            draw_text(out, y + h + 1, x + 1, labels[i], size, colour)
    return out


def _page_tiles(maps: np.ndarray, mode: Mode, cmap: str, fixed: tuple[float, float] | None, sort: SortKey,
                page: int, per_page: int, selected: int | None, summary: dict[str, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray, list[str | None], list[str]]:
    """The tiles of one grid page at native size: (channels (n,), uint8 (n, H, W, 3), marks, labels)."""
    diverging = cmap in DIVERGING
    lo, hi = value_ranges(summary, mode, fixed, diverging)
    chans = page_slice(channel_order(summary, sort), page, per_page)
    rgb = apply_colormap(normalise(maps[chans], lo[chans], hi[chans], diverging), colormap(cmap))
    marks_all = channel_marks(summary)
    marks = ["selected" if (c == selected and marks_all[c] is None) else marks_all[c] for c in chans]
    labels = [tile_label(int(c), summary["min"][c], summary["max"][c], marks_all[c]) for c in chans]
    return chans, rgb, marks, labels


def grid_image(maps: np.ndarray, *, mode: Mode = "layer", cmap: str = "viridis",
               fixed: tuple[float, float] | None = None, sort: SortKey = "index", page: int = 0,
               per_page: int = 64, cols: int = 8, tile_px: int = 96, base: np.ndarray | None = None,
               alpha: float = 0.0, selected: int | None = None, labels: bool = True,
               summary: dict[str, np.ndarray] | None = None) -> GridImage:
    """The channel grid of one layer for one image.

    maps: float (C, H, W) (see ``channel_maps``); base: optional uint8 (Hi, Wi, 3|1) image
    blended under every tile with weight ``alpha``. Tiles are upscaled by an integer factor
    to about ``tile_px`` (fewer columns if the grid would exceed MAX_WIDTH). ``summary``:
    ``channel_summary(maps)`` if the caller has it already.
    """
    summary = channel_summary(maps) if summary is None else summary
    chans, rgb, marks, text = _page_tiles(maps, mode, cmap, fixed, sort, page, per_page, selected, summary)
    _, h, w = maps.shape
    k = upscale_factor(h, w, tile_px)
    th, tw = h * k, w * k
    cols = max(1, min(cols, (MAX_WIDTH - 4) // (max(tw, 90) + 4)))
    rgb = upscale(rgb, k)
    if base is not None and alpha > 0:
        rgb = blend(rgb, resize_rgb(base, th, tw)[None], alpha)
    px = compose_grid(rgb, text, marks, cols, label_h=26 if labels else 0)
    return GridImage(px, tuple(int(c) for c in chans), grid_shape(len(chans), cols)[1], (th, tw))


@dataclass(frozen=True)
class GridHtml:
    """A channel grid as HTML: native-size tiles in one PNG, scaled up by the browser (``image-rendering: pixelated``).

    ``channels[i]`` is shown in tile i; ``tile`` is a tile's displayed size (height, width) in px.
    """

    html: str
    channels: tuple[int, ...]
    tile: tuple[int, int]


def data_uri(png: bytes) -> str:
    """PNG bytes as a ``data:`` URI (inline in HTML, no extra request)."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _rgb(c: Sequence[int]) -> str:
    return f"rgb({c[0]},{c[1]},{c[2]})"


LABEL_FONT = "11px/13px ui-monospace,Menlo,Consolas,'DejaVu Sans Mono',monospace"
LABEL_CHAR_PX = 6.7  # advance of one character of LABEL_FONT (0.6 em in common monospace fonts)


def tiles_html(tiles: np.ndarray, k: int, *, labels: Sequence[str] | None = None,
               marks: Sequence[str | None] | None = None, titles: Sequence[str] | None = None,
               base_uri: str | None = None, alpha: float = 0.0, kind: str = "ade-tiles") -> str:
    """HTML of tiles uint8 (n, H, W, 3) shown k times enlarged, in rows that wrap to the page width.

    The tiles go to the browser at native size as ONE PNG (stacked vertically) and each tile
    shows its part (CSS background position), upscaled without smoothing. ``base_uri``: an
    image drawn under every tile at opacity ``alpha`` (the overlay of ``blend``). ``marks``
    draw a coloured inner border (see MARK_RGB); ``labels`` (lines split by \\n) go under
    the tiles; ``titles`` are hover texts; ``kind`` is the outer element's class (for tests).
    """
    n, h, w, _ = tiles.shape
    th, tw = h * k, w * k
    sprite = to_png(np.reshape(tiles, (n * h, w, 3)))
    overlay = base_uri is not None and alpha > 0
    # the class names the content: styles of two elements on one page never mix, and a new grid is a new class
    cls = f"ade-t{zlib.crc32(sprite, zlib.crc32(repr((th, tw, alpha, base_uri if overlay else None)).encode())):08x}"
    lab_w = max((len(line) for lab in labels or () for line in lab.split("\n")), default=0)
    cell_w = max(tw, math.ceil(lab_w * LABEL_CHAR_PX) + 2)
    css = [f".{cls}{{display:flex;flex-wrap:wrap;gap:6px 4px;font:{LABEL_FONT};color:rgb(40,40,40)}}",
           f".{cls} .c{{width:{cell_w}px}}",
           f".{cls} .t{{position:relative;width:{tw}px;height:{th}px;image-rendering:pixelated;"
           f"background:var(--ade-sprite) 0 0/{tw}px {n * th}px no-repeat}}",
           f".{cls} .t>i{{position:absolute;inset:0}}",
           f".{cls} .l{{white-space:pre;overflow:hidden;margin-top:1px}}",
           f".{cls} .bad{{color:{_rgb(MARK_RGB['nonfinite'])}}}"]
    css += [f".{cls} .m-{name}{{box-shadow:inset 0 0 0 2px {_rgb(col)}}}" for name, col in MARK_RGB.items()]
    if overlay:
        css.append(f".{cls} .b{{background:var(--ade-base) 0 0/100% 100%;opacity:{alpha:g}}}")
    over = '<i class="b"></i>' if overlay else ""
    cells = []
    for i in range(n):
        mark = marks[i] if marks is not None else None
        title = f' title="{html.escape(titles[i])}"' if titles is not None else ""
        inner = over + (f'<i class="m-{mark}"></i>' if mark else "")
        lab = ""
        if labels is not None:
            bad = ' bad' if mark == "nonfinite" else ""
            lab = f'<div class="l{bad}">{html.escape(labels[i])}</div>'
        cells.append(f'<div class="c"{title}><div class="t" style="background-position:0 -{i * th}px">{inner}'
                     f'</div>{lab}</div>')
    # the images go in an attribute, not in <style>: Streamlit scans <style> blocks character by
    # character (a regex), which is slow on megabytes of data URIs
    images = f"--ade-sprite:url({data_uri(sprite)})" + (f";--ade-base:url({base_uri})" if overlay else "")
    return f'<style>{"".join(css)}</style><div class="{kind} {cls}" style="{images}">{"".join(cells)}</div>'


def tile_title(channel: int, summary: dict[str, np.ndarray]) -> str:
    """Hover text of a tile: the channel's statistics."""
    c = channel
    out = (f"channel {c}: min {fmt(summary['min'][c])}, max {fmt(summary['max'][c])}, "
           f"mean {fmt(summary['mean'][c])}, std {fmt(summary['std'][c])}")
    if summary["n_nonfinite"][c]:
        out += f", {int(summary['n_nonfinite'][c])} NaN/Inf values"
    return out + (", all zero" if summary["all_zero"][c] else "")


def grid_html(maps: np.ndarray, *, mode: Mode = "layer", cmap: str = "viridis",
              fixed: tuple[float, float] | None = None, sort: SortKey = "index", page: int = 0,
              per_page: int = 64, tile_px: int = 96, base_uri: str | None = None, alpha: float = 0.0,
              selected: int | None = None, summary: dict[str, np.ndarray] | None = None) -> GridHtml:
    """The channel grid of ``grid_image`` as HTML (``tiles_html``): the same tiles, marks and labels.

    Sending native-size tiles and letting the browser enlarge them costs a fraction of
    composing, labelling and encoding the enlarged grid (``bench/bench_pages.py``).
    """
    summary = channel_summary(maps) if summary is None else summary
    chans, rgb, marks, labels = _page_tiles(maps, mode, cmap, fixed, sort, page, per_page, selected, summary)
    _, h, w = maps.shape
    k = upscale_factor(h, w, tile_px)
    body = tiles_html(rgb, k, labels=labels, marks=marks, titles=[tile_title(int(c), summary) for c in chans],
                      base_uri=base_uri, alpha=alpha, kind="ade-grid")
    return GridHtml(body, tuple(int(c) for c in chans), (h * k, w * k))


def channel_view_html(m: np.ndarray, lo: float, hi: float, cmap: str = "viridis", size: int = 320,
                      base_uri: str | None = None, alpha: float = 0.0) -> str:
    """The large view of one channel map (H, W) as HTML, enlarged to about ``size`` px, scale lo..hi."""
    diverging = cmap in DIVERGING
    rgb = apply_colormap(normalise(m[None], np.array([lo]), np.array([hi]), diverging), colormap(cmap))
    return tiles_html(rgb, upscale_factor(*m.shape, size), base_uri=base_uri, alpha=alpha, kind="ade-view")


def colorbar_html(cmap: str, lo: float | None, hi: float | None, width: int = 320, caption: str = "",
                  low_text: str | None = None, high_text: str | None = None) -> str:
    """The colour bar of ``colorbar`` as HTML: a CSS gradient through the colormap's anchors (the same colours)."""
    if cmap not in _ANCHORS:
        raise ValueError(f"unknown colormap {cmap!r}; choose one of {list(COLORMAPS)}")
    a = _ANCHORS[cmap]
    stops = ",".join(f"{_rgb(c)} {100 * i / (len(a) - 1):.4g}%" for i, c in enumerate(a))
    left = low_text if low_text is not None else fmt(lo if lo is not None else math.nan)
    right = high_text if high_text is not None else fmt(hi if hi is not None else math.nan)
    mid = "<span>0</span>" if cmap in DIVERGING and low_text is None else ""
    cap = f'<div style="color:rgba(49,51,63,0.6);font-size:14px">{html.escape(caption)}</div>' if caption else ""
    return (f'<div class="ade-bar" style="width:{width}px"><div style="font:{LABEL_FONT};color:rgb(40,40,40)">'
            f'<div style="height:14px;background:linear-gradient(to right,{stops})"></div>'
            f'<div style="display:flex;justify-content:space-between"><span>{html.escape(left)}</span>{mid}'
            f'<span>{html.escape(right)}</span></div></div>{cap}</div>')


def colorbar(cmap: str, lo: float | None, hi: float | None, width: int = 320, height: int = 14,
             low_text: str | None = None, high_text: str | None = None) -> np.ndarray:
    """A horizontal colour bar with its end (and, if diverging, centre) values -> uint8 (height + 14, width, 3)."""
    lut = colormap(cmap)
    bar = np.repeat(lut[np.linspace(0, 255, width).round().astype(int)][None], height, axis=0)
    out = np.full((height + 14, width, 3), 255, np.uint8)
    out[:height] = bar
    left = low_text if low_text is not None else fmt(lo if lo is not None else math.nan)
    right = high_text if high_text is not None else fmt(hi if hi is not None else math.nan)
    ink = (40, 40, 40)
    draw_text(out, height + 1, 1, left, 11, ink)
    draw_text(out, height + 1, max(0, width - text_mask(right, 11).shape[1] - 1), right, 11, ink)
    if cmap in DIVERGING and low_text is None:
        draw_text(out, height + 1, width // 2 - 3, "0", 11, ink)
    return out


def fixed_range(layer_min: Sequence[float], layer_max: Sequence[float]) -> tuple[float, float] | None:
    """The fixed colour range of a layer over checkpoints: (min of finite mins, max of finite maxes)."""
    lo = np.asarray(layer_min, np.float64)
    hi = np.asarray(layer_max, np.float64)
    lo, hi = lo[np.isfinite(lo)], hi[np.isfinite(hi)]
    if not len(lo) or not len(hi):
        return None
    return float(lo.min()), float(hi.max())
