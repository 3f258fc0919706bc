"""grid_view: the grid page's grid from (maps, summary, GridSettings), equal to the keyword API it wraps."""
from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from core.render import grids as G
from core.render.grid_view import GridSettings, bar_args, bar_caption, grid_image, grid_view


def _maps() -> np.ndarray:
    m = np.random.default_rng(3).normal(0.0, 1.0, (6, 5, 4)).astype(np.float32)
    m[2] = 0.0
    m[4, 0, 0] = np.nan
    return m


@pytest.mark.parametrize("s", [
    GridSettings(),
    GridSettings("channel", "coolwarm", None, "std", 0, 4, 20, 0.0, 1),
    GridSettings("fixed", "magma", (-1.0, 2.0), "mean", 1, 4, 9, 0.5, None),
])
def test_grid_view_is_the_keyword_grid(s):
    maps = _maps()
    summary = G.channel_summary(maps)
    uri = G.data_uri(G.to_png(np.zeros((5, 4, 3), np.uint8)))
    v = grid_view(maps, summary, s, uri)
    kw = dict(mode=s.mode, cmap=s.cmap, fixed=s.fixed, sort=s.sort, page=s.page, per_page=s.per_page,
              tile_px=s.tile_px, alpha=s.alpha, selected=s.selected)
    assert v.html == G.grid_html(maps, base_uri=uri, summary=summary, **kw).html
    assert grid_view(maps, None, s, uri).html == v.html  # the summary is computed when not given
    lo, hi = G.value_ranges(summary, s.mode, s.fixed, s.cmap in G.DIVERGING)
    assert_array_equal(v.lo, lo)
    assert_array_equal(v.hi, hi)
    assert v.bar == bar_args(s, lo, hi) and v.bar[0] == s.cmap
    assert v.bar_html == G.colorbar_html(*v.bar[:3], caption=bar_caption(s), low_text=v.bar[3], high_text=v.bar[4])
    if s.selected is None:
        assert v.channel is None and v.channel_html is None
    else:
        c = v.channel
        assert c == s.selected
        assert v.channel_html == G.channel_view_html(maps[c], float(lo[c]), float(hi[c]), s.cmap, s.view_px, uri,
                                                     s.alpha)
    assert_array_equal(grid_image(maps, summary, s).pixels, G.grid_image(maps, summary=summary, **kw).pixels)


def test_grid_settings_are_a_hashable_value():
    a, b = GridSettings("fixed", fixed=(0.0, 1.0)), GridSettings("fixed", fixed=(0.0, 1.0))
    assert a == b and hash(a) == hash(b) and a != GridSettings("fixed", fixed=(0.0, 2.0))
    with pytest.raises(AttributeError):
        a.mode = "layer"  # frozen


def test_the_channel_viewed_is_the_last_when_the_selected_one_is_past_the_end():
    maps = _maps()
    v = grid_view(maps, None, GridSettings(selected=99))
    assert v.channel == len(maps) - 1 and v.channel_html


def test_bar_caption_names_the_scale_and_the_fixed_range():
    assert bar_caption(GridSettings("layer")) == "per layer (this checkpoint)"
    assert bar_caption(GridSettings("fixed", fixed=(-1.0, 2.5))) == f"fixed (all checkpoints): {G.fmt(-1.0)} .. {G.fmt(2.5)}"
