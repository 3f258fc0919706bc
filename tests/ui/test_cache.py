"""ui.cache's own memo: keys, eviction, one computation per key across threads, errors not kept."""
from __future__ import annotations

import threading
import time

import pytest

from ui.cache import memo


def test_memo_keys_on_plain_arguments_and_evicts_the_oldest():
    calls = []

    @memo(2)
    def f(a: int, b: str = "x", _payload: object = None) -> tuple:
        calls.append((a, b))
        return (a, b, _payload)

    assert f(1, _payload="first") == (1, "x", "first")
    assert f(1, _payload="other") == (1, "x", "first")  # "_" arguments are not part of the key
    assert f(1, b="y") == (1, "y", None) and f(2) == (2, "x", None)
    assert calls == [(1, "x"), (1, "y"), (2, "x")]
    f(1)  # (1, "x") was evicted when (2, "x") came in: at most 2 entries
    assert calls[-1] == (1, "x") and len(f.values) == 2
    f(2)
    assert calls[-1] == (1, "x")  # still there (used lately)
    f.clear()
    f(2)
    assert calls[-1] == (2, "x")
    assert f.__name__ == "f"


def test_memo_computes_a_key_once_for_concurrent_callers():
    started, gate, calls, released = threading.Event(), threading.Event(), [], []

    @memo(4)
    def slow(k: str) -> list:
        calls.append(k)
        if k == "a":  # "a" is held until the gate opens, which happens only after "b" returned
            started.set()
            released.append(gate.wait(10))
        return [k]

    out = []
    threads = [threading.Thread(target=lambda: out.append(slow("a"))) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait(10)
    assert slow("b") == ["b"]  # another key is not held up by "a" being computed
    time.sleep(0.05)
    gate.set()
    for t in threads:
        t.join(10)
    assert calls.count("a") == 1 and len(out) == 4 and all(o is out[0] for o in out)
    assert released == [True]  # "a" was released by the gate, not by the timeout: "b" did not wait for it


def test_memo_does_not_keep_errors():
    n = []

    @memo(4)
    def flaky(k: int) -> int:
        n.append(k)
        if len(n) == 1:
            raise OSError("checkpoint being written")
        return k

    with pytest.raises(OSError):
        flaky(1)
    assert flaky(1) == 1 and len(n) == 2 and not flaky.busy


def test_grid_png_is_the_labelled_grid_under_a_title_and_colour_bar():
    import io

    import numpy as np
    from PIL import Image

    from core.render import grids
    from core.render.grid_view import grid_view
    from ui.grid_cache import GridSettings, grid_png

    maps = np.random.default_rng(0).normal(size=(6, 5, 5)).astype(np.float32)
    summary = grids.channel_summary(maps)
    settings = GridSettings("layer", "viridis", None, "index", 0, 64, 20, 0.0, 2)
    view = grid_view(maps, summary, settings)
    png = Image.open(io.BytesIO(grid_png(view, None, title="run | conv | mini-epoch 3")))
    g = grids.grid_image(maps, tile_px=20, selected=2, summary=summary).pixels
    px = np.asarray(png)
    assert px.shape[0] == 18 + 4 + 28 + 4 + g.shape[0] and px.shape[1] == max(g.shape[1], 324)
    np.testing.assert_array_equal(px[-g.shape[0]:, :g.shape[1]], g)  # the grid, as grid_image draws it
    assert (px[:18] < 128).any()  # the title is written
    empty = np.asarray(Image.open(io.BytesIO(grid_png())))
    assert empty.shape[0] == 20 and (empty < 128).any()  # says there is nothing to download


def test_overlay_is_the_image_given_not_one_cached_under_the_same_name():
    """Probe image 0 of two runs has one image key ("probe:000") and different pixels."""
    import numpy as np

    from core.render import grids
    from ui.grid_cache import GridSettings, draw

    maps = np.zeros((2, 3, 3), np.float32)
    settings = GridSettings("layer", "viridis", None, "index", 0, 64, 9, 0.5, 0)
    a, b = np.zeros((3, 3, 3), np.uint8), np.full((3, 3, 3), 200, np.uint8)
    uri = lambda doc: doc.split("--ade-base:url(")[1].split(")")[0]  # noqa: E731
    a_view, b_view = draw(maps, settings, a, None), draw(maps, settings, b, None)
    assert uri(a_view.html) == uri(a_view.channel_html) == grids.data_uri(grids.to_png(a))
    assert uri(b_view.html) == uri(b_view.channel_html) == grids.data_uri(grids.to_png(b))
