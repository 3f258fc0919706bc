"""The channel grid page's drawing, memoised (``grid``), its PNG download and its read-ahead."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.render.grid_view import GridSettings, GridView, grid_view
from ui import cache
from ui.memo import memo

__all__ = ["GridSettings", "GridView", "ShownGrid", "draw", "grid", "grid_png", "read_ahead"]


@memo(64)  # a grid of 64 tiles of 112x112 is 1.6 MB of HTML
def grid(run_path: str, arch: int, ckpt: tuple, image_key: str, layer: str, trust: bool, settings: GridSettings,
         _image: np.ndarray) -> GridView:
    """The grid page's view of ``layer`` at ``ckpt`` for the probe image ``_image`` (key ``image_key``).

    A view drawn ahead in the background (``read_ahead``) is taken as it is; otherwise the layer
    is extracted (``cache.layer_maps``) and drawn (``core.render.grid_view.grid_view``).
    Raises what the extraction raises (RunError, ValueError, OSError).
    """
    drawn = cache.read_ahead_state().drawn((run_path, arch, ckpt, image_key, layer, trust, settings))
    if drawn is not None:
        return drawn
    maps, summary = cache.layer_maps(run_path, arch, ckpt, image_key, layer, trust, _image=_image)
    return draw(maps, settings, _image, summary)


def draw(maps: np.ndarray, settings: GridSettings, base: np.ndarray | None, summary: dict | None) -> GridView:
    """``grid_view`` of ``maps`` with the probe image ``base`` under the tiles when ``settings.alpha`` > 0."""
    return grid_view(maps, summary, settings, _overlay_uri(base, settings.alpha))


def grid_png(view: GridView | None = None, base: np.ndarray | None = None, title: str = "") -> bytes:
    """A title line, the colour bar and the channel grid of ``view`` with its labels as one PNG (the download).

    Without ``view`` (nothing drawn), a PNG that says so.
    """
    from core.render import grids
    from core.render.grid_view import grid_image

    if view is None:
        note = np.full((20, 420, 3), 255, np.uint8)
        grids.draw_text(note, 4, 4, "No grid: this checkpoint could not be extracted.", 12, (40, 40, 40))
        return grids.to_png(note)
    g = grid_image(view.maps, view.summary, view.settings, base)
    bar_cmap, bar_lo, bar_hi, low_text, high_text = view.bar
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


@dataclass(frozen=True)
class ShownGrid:
    """What the channel grid page shows, independent of the checkpoint (to draw the next one ahead)."""

    layer: str
    settings: GridSettings


def read_ahead(run_path: str, arch: int, ckpt: tuple, image_key: str, trust: bool, image: np.ndarray,
               view: ShownGrid | None = None) -> bool:
    """Start computing ``image_activations`` of ``ckpt`` in the background (unless done lately); True if started.

    With ``view``, also draw the channel grid page's view of that checkpoint. The engine
    is looked up here, in the script thread: Streamlit's caches need its context.
    """
    eng = cache.engine(run_path, arch, trust)
    key = cache.activations_key(run_path, arch, ckpt, image_key, trust)

    ahead = cache.read_ahead_state()

    def job() -> dict[str, np.ndarray]:
        acts = cache.compute_activations(eng, ckpt, image)
        if view is not None and view.layer in acts:
            from core.render import grids

            maps = grids.channel_maps(acts[view.layer])
            ahead.keep_drawings({(run_path, arch, ckpt, image_key, view.layer, trust, view.settings):
                                 draw(maps, view.settings, image, grids.channel_summary(maps))})
        return acts

    return ahead.submit(key, job)
