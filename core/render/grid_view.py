"""The channel grid page's drawing as one pure function of the maps, their summary and the page's settings."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.render import grids
from core.render.grids import Mode, SortKey

#: What each colour scale means, as the page and the colour bar's caption name it.
SCALE_LABELS: dict[str, str] = {"layer": "per layer (this checkpoint)", "channel": "per channel",
                                "fixed": "fixed (all checkpoints)"}


@dataclass(frozen=True)
class GridSettings:
    """How the grid is drawn (hashable: it is part of cache keys)."""

    mode: Mode = "layer"
    cmap: str = "viridis"
    fixed: tuple[float, float] | None = None  # the colour range of ``mode="fixed"``
    sort: SortKey = "index"
    page: int = 0
    per_page: int = 64
    tile_px: int = 96
    alpha: float = 0.0  # weight of the probe image under the tiles
    selected: int | None = None  # the channel outlined as selected and shown large
    view_px: int = 280  # about the size of the selected channel's large view


@dataclass(frozen=True)
class GridView:
    """What the page shows of one layer at one checkpoint: colour bar, grid and the selected channel, as HTML."""

    maps: np.ndarray  # what was drawn, (C, H, W)
    summary: dict[str, np.ndarray]  # ``grids.channel_summary`` of ``maps``
    settings: GridSettings
    html: str  # the grid
    bar_html: str  # the colour bar with its caption
    channel: int | None  # the channel enlarged: the selected one, or the last if there are fewer
    channel_html: str | None  # that channel on the grid's colour scale (None: none selected)
    lo: np.ndarray  # per-channel colour range, (C,) each
    hi: np.ndarray
    bar: tuple  # ``colorbar_html(cmap, lo, hi, low_text, high_text)`` arguments (no caption)


def grid_scales(summary: dict[str, np.ndarray], s: GridSettings) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel colour range (lo, hi) of the grid with settings ``s``, (C,) each."""
    return grids.value_ranges(summary, s.mode, s.fixed, s.cmap in grids.DIVERGING)


def bar_args(s: GridSettings, lo: np.ndarray, hi: np.ndarray) -> tuple:
    """``colorbar_html`` arguments of the grid's colour bar (without the caption)."""
    if s.mode == "channel":
        diverging = s.cmap in grids.DIVERGING
        return (s.cmap, None, None, "-max|x|" if diverging else "channel min",
                "+max|x|" if diverging else "channel max")
    return (s.cmap, float(lo[0]) if len(lo) else None, float(hi[0]) if len(hi) else None, None, None)


def grid_html(maps: np.ndarray, summary: dict[str, np.ndarray] | None, s: GridSettings,
              base_uri: str | None = None) -> str:
    """The grid's HTML (``grids.grid_html``) with settings ``s``; ``base_uri``: the probe image under the tiles."""
    return grids.grid_html(maps, mode=s.mode, cmap=s.cmap, fixed=s.fixed, sort=s.sort, page=s.page,
                           per_page=s.per_page, tile_px=s.tile_px, base_uri=base_uri, alpha=s.alpha,
                           selected=s.selected, summary=summary).html


def bar_caption(s: GridSettings) -> str:
    """What the colour scale is, under the colour bar."""
    fixed = "" if s.mode != "fixed" or s.fixed is None else f": {grids.fmt(s.fixed[0])} .. {grids.fmt(s.fixed[1])}"
    return SCALE_LABELS[s.mode] + fixed


def grid_view(maps: np.ndarray, summary: dict[str, np.ndarray] | None, settings: GridSettings,
              base_uri: str | None = None) -> GridView:
    """The grid of ``maps`` (C, H, W) as the page shows it; ``base_uri``: the probe image under the tiles."""
    summary = grids.channel_summary(maps) if summary is None else summary
    lo, hi = grid_scales(summary, settings)
    bar = bar_args(settings, lo, hi)
    cmap, bar_lo, bar_hi, low_text, high_text = bar
    c = None if settings.selected is None or not len(maps) else min(max(settings.selected, 0), len(maps) - 1)
    view = None
    if c is not None:
        view = grids.channel_view_html(maps[c], float(lo[c]), float(hi[c]), settings.cmap, settings.view_px,
                                       base_uri, settings.alpha)
    return GridView(maps, summary, settings, grid_html(maps, summary, settings, base_uri),
                    grids.colorbar_html(cmap, bar_lo, bar_hi, caption=bar_caption(settings), low_text=low_text,
                                        high_text=high_text),
                    c, view, lo, hi, bar)


def grid_image(maps: np.ndarray, summary: dict[str, np.ndarray] | None, s: GridSettings,
               base: np.ndarray | None = None) -> grids.GridImage:
    """The labelled grid as one uint8 RGB image (``grids.grid_image``) with settings ``s``."""
    return grids.grid_image(maps, mode=s.mode, cmap=s.cmap, fixed=s.fixed, sort=s.sort, page=s.page,
                            per_page=s.per_page, tile_px=s.tile_px, base=base, alpha=s.alpha,
                            selected=s.selected, summary=summary)
