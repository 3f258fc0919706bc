"""Memoised drawings of the channel grid page (grid, colour bars, channel view) and its read-ahead."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.render import grid_view
from core.render.grid_view import GridSettings, bar_args, grid_scales
from ui import cache
from ui.memo import memo

__all__ = ["GridSettings", "bar_args", "grid_scales"]  # the page reads the grid's scales through here


@memo(64)  # a grid of 64 tiles of 112x112 is 1.6 MB of HTML
def grid_html(run_path: str, ckpt: tuple, image_key: str, layer: str, settings: GridSettings,
              _maps: np.ndarray, _base: np.ndarray | None = None, _summary: dict | None = None) -> str:
    """The channel grid as HTML (``core.render.grids.grid_html``).

    ``_maps`` (C, H, W) and ``_base`` (the probe image) are what (run_path, ckpt, image_key, layer)
    identify, so revisiting a checkpoint or re-running the page costs no drawing.
    """
    drawn = cache.read_ahead_state().drawn(("grid", run_path, ckpt, image_key, layer, settings))
    return drawn if drawn is not None else _draw_grid(_maps, settings, _base, _summary)


def _draw_grid(maps: np.ndarray, settings: GridSettings, base: np.ndarray | None,
               summary: dict | None = None) -> str:
    return grid_view.grid_html(maps, summary, settings, _overlay_uri(base, settings.alpha))


def grid_png(maps: np.ndarray | None = None, settings: GridSettings = GridSettings(), base: np.ndarray | None = None,
             summary: dict | None = None, title: str = "") -> bytes:
    """A title line, the colour bar and the channel grid with its labels as one PNG (the grid page's download).

    Without ``maps`` (nothing drawn), a PNG that says so.
    """
    from core.render import grids

    if maps is None or summary is None:
        note = np.full((20, 420, 3), 255, np.uint8)
        grids.draw_text(note, 4, 4, "No grid: this checkpoint could not be extracted.", 12, (40, 40, 40))
        return grids.to_png(note)
    g = grid_view.grid_image(maps, summary, settings, base)
    lo, hi = grid_scales(summary, settings)
    bar_cmap, bar_lo, bar_hi, low_text, high_text = bar_args(settings, lo, hi)
    bar = grids.colorbar(bar_cmap, bar_lo, bar_hi, low_text=low_text, high_text=high_text)
    head = np.full((18, max(g.pixels.shape[1], bar.shape[1] + 4), 3), 255, np.uint8)
    grids.draw_text(head, 4, 4, title, 12, (40, 40, 40))
    return grids.to_png(grids.stack([head, np.pad(bar, ((0, 0), (4, 0), (0, 0)), constant_values=255), g.pixels],
                                    gap=4))


@memo(32)
def image_uri(key: str, _pixels: np.ndarray) -> str:
    """uint8 (H, W, C) image as a PNG ``data:`` URI (``key``: a digest of the pixels)."""
    from core.render import grids

    return grids.data_uri(cache.encode_png(_pixels))


def _overlay_uri(base: np.ndarray | None, alpha: float) -> str | None:
    """The probe image under the tiles as a ``data:`` URI, or None without an overlay.

    Keyed by the pixels' digest: an image key such as ``probe:000`` names different pixels in different runs.
    """
    return image_uri(cache.digest(base.tobytes()), base) if base is not None and alpha > 0 else None


@memo(256)
def colorbar_html(cmap: str, lo: float | None, hi: float | None, low_text: str | None = None,
                  high_text: str | None = None, caption: str = "") -> str:
    """A colour bar (see ``core.render.grids.colorbar_html``)."""
    from core.render import grids

    return grids.colorbar_html(cmap, lo, hi, caption=caption, low_text=low_text, high_text=high_text)


@memo(128)
def channel_view_html(run_path: str, ckpt: tuple, image_key: str, layer: str, channel: int, scale: tuple,
                      _map: np.ndarray, _base: np.ndarray | None = None) -> str:
    """The large view of one channel as HTML; ``scale`` = (lo, hi, cmap, size, alpha)."""
    drawn = cache.read_ahead_state().drawn(("view", run_path, ckpt, image_key, layer, channel, scale))
    return drawn if drawn is not None else _draw_view(_map, scale, _base)


def _draw_view(m: np.ndarray, scale: tuple, base: np.ndarray | None) -> str:
    from core.render import grids

    lo, hi, cmap, size, alpha = scale
    return grids.channel_view_html(m, lo, hi, cmap, size, _overlay_uri(base, alpha), alpha)


@dataclass(frozen=True)
class ShownGrid:
    """What the channel grid page shows of a layer, independent of the checkpoint (to draw one ahead)."""

    layer: str
    settings: GridSettings
    channel: int  # the single-channel view
    view_px: int


def _draw_ahead(acts: dict[str, np.ndarray], view: ShownGrid, run_path: str, ckpt: tuple, image_key: str,
                image: np.ndarray) -> dict[tuple, str]:
    """The grid page's grid and channel view of ``view`` at ``ckpt``, keyed like grid_html / channel_view_html."""
    from core.render import grids

    maps = grids.channel_maps(acts[view.layer])
    summary = grids.channel_summary(maps)
    lo, hi = grid_scales(summary, view.settings)
    cmap, alpha = view.settings.cmap, view.settings.alpha
    out = {("grid", run_path, ckpt, image_key, view.layer, view.settings): _draw_grid(maps, view.settings, image,
                                                                                       summary)}
    if 0 <= view.channel < len(maps):
        scale = (float(lo[view.channel]), float(hi[view.channel]), cmap, view.view_px, alpha)
        out[("view", run_path, ckpt, image_key, view.layer, view.channel, scale)] = _draw_view(
            maps[view.channel], scale, image)
    return out


def read_ahead(run_path: str, arch: int, ckpt: tuple, image_key: str, trust: bool, image: np.ndarray,
               view: ShownGrid | None = None) -> bool:
    """Start computing ``image_activations`` of ``ckpt`` in the background (unless done lately); True if started.

    With ``view``, also draw the channel grid page's images of that checkpoint. The engine
    is looked up here, in the script thread: Streamlit's caches need its context.
    """
    eng = cache.engine(run_path, arch, trust)
    key = cache.activations_key(run_path, arch, ckpt, image_key, trust)

    ahead = cache.read_ahead_state()

    def job() -> dict[str, np.ndarray]:
        acts = cache.compute_activations(eng, ckpt, image)
        if view is not None and view.layer in acts:
            ahead.keep_drawings(_draw_ahead(acts, view, run_path, ckpt, image_key, image))
        return acts

    return ahead.submit(key, job)
