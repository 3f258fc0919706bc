"""Every page through AppTest on the tiny runs: renders, reacts to its controls, never raises."""
from __future__ import annotations

import re
import shutil

import pytest

from tests.conftest import BUILTIN_PHOTOS, PHOTO_NAMES
from tests.pages.conftest import PAGES, grid_html, open_app, play_toggle, png_bytes, run_ok, scrub_slider, texts


def _select_run(at, name: str):
    at.selectbox(key="w_run").set_value(name)
    return run_ok(at)


def test_every_page_on_every_tiny_run(app_env):
    at = open_app()
    for run in ("tiny", "tiny-nose", "tiny-nan"):
        _select_run(at, run)
        for page in PAGES:
            at.switch_page(f"pages/{page}.py")
            run_ok(at)
            assert at.title[0].value, page
            if page in ("dynamics", "weights") or (page == "gates" and run != "tiny-nose"):
                assert len(at.get("vega_lite_chart")) >= 3, (run, page)
            if page == "gates" and run == "tiny-nose":
                assert "no squeeze-and-excitation" in texts(at, "info")
                assert not at.get("vega_lite_chart")
            if page == "grid":
                assert grid_html(at).count('class="c"') == 8 and grid_html(at, "ade-view"), run  # stem_conv
                assert at.get("image")  # the probe image's thumbnail in the sidebar


def test_grid_controls(app_env):
    at = open_app("grid")
    md = texts(at, "markdown")
    assert "stem_conv" in md and "8 channels" in md
    layers = at.selectbox(key="w_layer").options
    assert any("block2_add" in o for o in layers)
    at.selectbox(key="w_layer").set_value("block2_add")
    at.selectbox(key="w_grid_scale").set_value("fixed")  # sweeps this image over every checkpoint
    at.selectbox(key="w_grid_cmap").set_value("coolwarm")
    at.selectbox(key="w_grid_sort").set_value("std")
    at.slider(key="w_grid_alpha").set_value(0.5)
    run_ok(at)
    assert "block2_add" in texts(at, "markdown") and "12 channels" in texts(at, "markdown")
    g = grid_html(at)
    assert g.count('class="c"') == 12 and g.count('<i class="b">') == 12  # the overlay under every tile
    assert "fixed (all checkpoints): " in "".join(h.proto.body for h in at.get("html"))  # colour bar caption
    assert "rgb(59,76,192) 0%" in "".join(h.proto.body for h in at.get("html"))  # coolwarm's first colour
    # the trajectory is available now (the fixed scale swept the image); pick a channel
    at.number_input(key="w_grid_channel").set_value(3)
    run_ok(at)
    assert len(at.get("vega_lite_chart")) == 1
    assert grid_html(at).count('<i class="m-selected">') == 1  # the channel viewed has an orange border
    at.selectbox(key="w_grid_per_page").set_value(16)
    at.selectbox(key="w_grid_tile").set_value("large")
    run_ok(at)
    assert at.get("download_button")[0].label == "Download the grid (PNG)"
    from ui.grid_cache import grid_png  # what the button downloads: the grid shown, under its title

    shown = at.session_state["grid_shown"]
    assert shown["view"].settings.per_page == 16 and "block2_add" in shown["title"]
    assert grid_png(**shown).startswith(b"\x89PNG")


def test_grid_trajectory_on_demand(app_env, tmp_path, monkeypatch):
    """On a copy of the run without its cache, the trajectory waits for the button; the button draws it."""
    from core.run.runs import Run

    src = Run(app_env / "tiny")
    shutil.copytree(src.path, tmp_path / "tiny", ignore=shutil.ignore_patterns(src.cache_dir.name))
    monkeypatch.setenv("ADE_RUNS_ROOT", str(tmp_path))
    at = open_app("grid")
    at.selectbox(key="w_probe").set_value(5)
    run_ok(at)
    assert not at.get("vega_lite_chart"), "the trajectory was drawn before it was asked for"
    import streamlit as st

    said: list[str] = []
    spinner = st.spinner
    monkeypatch.setattr(st, "spinner", lambda text="", **kw: (said.append(text), spinner(text, **kw))[1])
    at.button(key="grid_traj_btn").click()
    run_ok(at)
    assert len(at.get("vega_lite_chart")) == 1
    assert any("channel 0" in t for t in said), said  # issue 17.9: the wait says what it does


def test_grid_marks_nan_channels(app_env):
    at = open_app("grid", {"run": "tiny-nan", "ckpt": "3", "layer": "block1_conv1"})
    assert at.selectbox(key="w_run").value == "tiny-nan"
    assert "NaN or Inf" in texts(at, "error")
    assert "NaN/Inf" in texts(at, "markdown")
    assert '<i class="m-nonfinite">' in grid_html(at) and "NaN/Inf values" in grid_html(at)  # red border, hover text
    at.selectbox(key="w_grid_scale").set_value("fixed")
    run_ok(at)
    scrub_slider(at).set_value(1)  # before the NaN: clean
    run_ok(at)
    assert "NaN or Inf" not in texts(at, "error") and '<i class="m-nonfinite">' not in grid_html(at)


def test_query_params_round_trip(app_env):
    at = open_app(query={"run": "tiny", "ckpt": "1", "layer": "block1_conv1", "page": "grid"})
    assert at.title[0].value == "Channel grid"
    assert scrub_slider(at).value == 1
    assert at.selectbox(key="w_layer").value == "block1_conv1"
    assert at.query_params["ckpt"] == "1" and at.query_params["page"] == "grid"
    scrub_slider(at).set_value(2)
    run_ok(at)
    assert at.query_params["ckpt"] == "2" and at.query_params["layer"] == "block1_conv1"
    assert at.query_params["run"] == "tiny"
    at.button(key="w_ckpt_prev").click()
    run_ok(at)
    assert at.query_params["ckpt"] == "1" and scrub_slider(at).value == 1
    at.button(key="w_ckpt_next").click()
    at.run()
    at.button(key="w_ckpt_next").click()
    run_ok(at)
    assert at.query_params["ckpt"] == "3"
    play_toggle(at).set_value(True)  # Play from the end restarts at the first checkpoint
    run_ok(at)
    assert scrub_slider(at).value == 0
    play_toggle(at).set_value(False)
    run_ok(at)
    # the choice survives a page switch and comes back in the URL
    at.switch_page("pages/dynamics.py")
    run_ok(at)
    assert at.query_params["ckpt"] == "0" and at.query_params["page"] == "dynamics"
    assert at.selectbox(key="w_layer").value == "block1_conv1"


def test_a_request_sent_before_the_moved_scrubber_was_drawn_does_not_move_it_back(app_env):
    """The browser sends every widget's value with every request, Play's timer ticks included.

    One sent after the app moved the checkpoint (Play, Next) but before the browser drew the
    moved slider carries the old value. Under the same widget key Streamlit took it for the
    user's move back: Play stepped back or never ended on a busy machine (the browser test's
    "Play did not step" failure). Replayed here: the widget values of the page before the move.
    """
    at = open_app(query={"run": "tiny", "ckpt": "1", "page": "grid"})
    as_drawn_before = at._tree.get_widget_states()  # what a browser that has not drawn the next run sends
    at.button(key="w_ckpt_next").click()
    run_ok(at)
    assert at.query_params["ckpt"] == "2" and "mini-epoch **2**" in texts(at, "markdown")
    at._run(as_drawn_before)  # AppTest's run with given widget values (what AppTest.run() does with its own)
    assert not at.exception, [e.message for e in at.exception]
    assert at.query_params["ckpt"] == "2" and scrub_slider(at).value == 2
    assert "mini-epoch **2**" in texts(at, "markdown")


def test_shared_link_restores_the_grid_settings_and_the_probe_image(app_env):
    """Issue 17.5: colour scale, colormap, sort, tile size and the probe image travel in the link too."""
    q = {"run": "tiny", "page": "grid", "ckpt": "2", "scale": "channel", "cmap": "coolwarm", "sort": "std",
         "tile": "large", "source": "probe", "probe": "3"}
    at = open_app(query=q)
    assert at.title[0].value == "Channel grid"
    assert (at.selectbox(key="w_grid_scale").value, at.selectbox(key="w_grid_cmap").value,
            at.selectbox(key="w_grid_sort").value, at.selectbox(key="w_grid_tile").value) == (
        "channel", "coolwarm", "std", "large")
    assert at.selectbox(key="w_probe").value == 3
    assert all(at.query_params[k] == v for k, v in q.items()), dict(at.query_params)
    at.selectbox(key="w_grid_sort").set_value("mean")
    run_ok(at)
    assert at.query_params["sort"] == "mean"
    # Train and Compare keep the run in the link
    for page in ("train", "compare"):
        at.switch_page(f"pages/{page}.py")
        run_ok(at)
        assert at.query_params["run"] == "tiny", (page, dict(at.query_params))
    bad = open_app(query={"run": "tiny", "page": "grid", "sort": "colour"})
    assert "sort='colour'" in texts(bad, "warning") and bad.selectbox(key="w_grid_sort").value == "index"


def test_grid_scrubber_is_a_fragment_in_its_sidebar_place(app_env, monkeypatch):
    """On the grid page the scrubber is written by the checkpoint fragment, between run and probe image."""
    from ui import state

    monkeypatch.setattr(state, "FRAGMENT_TIMES", {})
    at = open_app(query={"run": "tiny", "ckpt": "1", "page": "grid"})
    side = [c.type for c in at.sidebar.children.values()]
    assert side[0] == "selectbox" and len(side) >= 3
    blocks = list(at.sidebar.children.values())
    assert blocks[1].select_slider[0].value == 1  # right under the run picker
    assert blocks[2].radio(key="w_source")  # the probe image comes after it
    n = len(state.FRAGMENT_TIMES["grid"])
    scrub_slider(at).set_value(2)
    run_ok(at)
    assert len(state.FRAGMENT_TIMES["grid"]) == n + 1 and "mini-epoch **2**" in texts(at, "markdown")
    assert at.query_params["ckpt"] == "2"
    play_toggle(at).set_value(True)  # Play's timer is started by the full run
    run_ok(at)
    assert at.radio(key="w_speed").value == "1 s"


def test_grid_checkpoint_that_cannot_be_read_keeps_the_scrubber(app_env, monkeypatch):
    from core.run.runs import Run, RunError

    def broken(self, ckpt, architecture=None, names=None):
        raise RunError(self.path, "unreadable or truncated checkpoint")

    _clear_image_caches()
    monkeypatch.setattr(Run, "read_weights", broken)
    at = open_app(query={"run": "tiny", "ckpt": "2", "page": "grid"})
    assert "could not be extracted" in texts(at, "error")
    at.button(key="w_ckpt_prev").click()  # still there: the user can move away
    run_ok(at)
    assert scrub_slider(at).value == 1
    monkeypatch.undo()
    _clear_image_caches()


def test_invalid_query_params_fall_back_with_warnings(app_env):
    at = open_app(query={"run": "nope", "ckpt": "99", "layer": "../etc", "page": "nowhere"})
    w = texts(at, "warning")
    assert "nope" in w and "99" in w and "nowhere" in w
    at.switch_page("pages/grid.py")
    run_ok(at)
    assert "../etc" in texts(at, "warning")
    assert at.query_params["ckpt"] == "3"


@pytest.mark.parametrize("bad", [b"", b"definitely not an image", png_bytes()[:60]])
def test_upload_good_then_bad_image(app_env, bad):
    at = open_app("grid")
    at.radio(key="w_source").set_value("upload")
    run_ok(at)
    good = (BUILTIN_PHOTOS / "chelsea.png").read_bytes()
    at.get("file_uploader")[0].set_value(("chelsea.png", good, "image/png"))
    run_ok(at)
    assert "upload chelsea.png" in texts(at, "markdown")
    assert not at.error
    at.get("file_uploader")[0].set_value(("bad.png", bad, "image/png"))
    run_ok(at)
    err = texts(at, "error")
    assert "image" in err.lower()
    assert "#0" in texts(at, "markdown")  # falls back to probe image 0 and keeps working
    at.switch_page("pages/dynamics.py")
    run_ok(at)


def test_upload_size_limit_is_said_in_the_page(app_env):
    """Issue 17.6: the browser refuses a file over the limit by itself; the page says the limit up front."""
    import streamlit as st

    at = open_app("grid")
    at.radio(key="w_source").set_value("upload")
    run_ok(at)
    limit = st.get_option("server.maxUploadSize")
    assert f"Files over {limit} MB are refused" in texts(at, "caption")
    assert f"up to {limit} MB" in at.get("file_uploader")[0].proto.label


def test_builtin_photos_are_offered(app_env):
    from ui import state

    assert [p.name for p in state.photos()] == list(PHOTO_NAMES), f"built-in photos missing in {state.PHOTOS_DIR}"
    at = open_app("grid")
    assert "Built-in photo" in at.radio(key="w_source").options
    at.radio(key="w_source").set_value("photo")
    run_ok(at)
    assert at.selectbox(key="w_photo").options == list(PHOTO_NAMES)
    at.selectbox(key="w_photo").set_value("coffee.png")
    run_ok(at)
    assert "photo coffee.png" in texts(at, "markdown")
    at.switch_page("pages/dynamics.py")
    run_ok(at)  # the photo is swept as an extra image
    assert len(at.get("vega_lite_chart")) >= 3


def test_builtin_photo_choice_hidden_without_photos(app_env, tmp_path, monkeypatch):
    from ui import probe_picker

    monkeypatch.setattr(probe_picker, "PHOTOS_DIR", tmp_path)  # an empty folder
    at = open_app("grid")
    assert "Built-in photo" not in at.radio(key="w_source").options


def test_dynamics_and_weights_options(app_env):
    at = open_app("dynamics")
    at.radio(key="w_x_axis").set_value("images_seen")
    at.toggle(key="w_dyn_log").set_value(True)
    at.multiselect(key="w_dyn_probes").set_value([0, 1, 2])
    at.selectbox(key="w_layer").set_value("block3_se_gate")
    at.radio(key="w_dyn_stat").set_value("mean")
    at.selectbox(key="w_dyn_ref").set_value(0)
    run_ok(at)
    assert len(at.get("vega_lite_chart")) == 3
    assert "trap" in texts(at, "caption")
    at.switch_page("pages/weights.py")
    run_ok(at)
    at.selectbox(key="w_w_var").set_value("gamma")
    at.toggle(key="w_w_per_step").set_value(True)
    run_ok(at)
    at.switch_page("pages/gates.py")
    run_ok(at)
    at.selectbox(key="w_gates_block").set_value("block3_se")
    run_ok(at)


def test_trust_opt_in(trust_root, monkeypatch):
    from tests.pages.conftest import REPO

    monkeypatch.setenv("ADE_RUNS_ROOT", str(trust_root))
    monkeypatch.chdir(REPO)
    at = open_app("grid")
    assert "Lambda" in texts(at, "warning")
    assert not grid_html(at)  # no grid yet
    at.checkbox(key="w_trust:lambda-run").check()
    run_ok(at)
    assert "conv" in texts(at, "markdown")
    assert grid_html(at)


def test_findings_panel_and_show_button(app_env):
    at = open_app(query={"run": "tiny-nan"})
    buttons = [b for b in at.button if str(b.key or "").startswith("finding_overview_")]
    assert buttons, "the overview lists the run's findings"
    show = buttons[0]  # the most severe: NaN/Inf, from mini-epoch 2 where the fixture planted it
    assert re.fullmatch(r"Open (?!Overview).+, mini-epoch 2", show.help), show.help
    show.click()
    run_ok(at)
    assert at.query_params["page"] != "overview" and at.title[0].value != "Overview"
    assert at.query_params["ckpt"] == "2", dict(at.query_params)


def _clear_image_caches():
    from ui import cache, grid_cache

    for fn in (cache.image_activations, cache.image_layer, cache.layer_maps, grid_cache.grid,
               cache.read_ahead_state):
        fn.clear()


def test_next_checkpoint_is_read_and_drawn_ahead(app_env, monkeypatch):
    """The grid page extracts and draws the next checkpoint in the background; Next then uses that work."""
    import threading
    import time

    from core.engine.engine import RunEngine
    from ui import cache, grid_cache

    _clear_image_caches()
    calls, draws = [], []
    real_acts, real_grid = RunEngine.activations, grid_cache.draw

    def spy_acts(self, ckpt, images):
        calls.append((ckpt.mini_epoch, threading.current_thread().name))
        return real_acts(self, ckpt, images)

    def spy_grid(*a):
        draws.append(threading.current_thread().name)
        return real_grid(*a)

    monkeypatch.setattr(RunEngine, "activations", spy_acts)
    monkeypatch.setattr(grid_cache, "draw", spy_grid)
    at = open_app("grid", {"run": "tiny", "ckpt": "1", "layer": "block2_add"})
    deadline = time.monotonic() + 30
    while not cache.read_ahead_idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [t for me, t in calls if me == 2] and all(t.startswith("ade-read-ahead") for me, t in calls if me == 2)
    assert draws and draws[-1].startswith("ade-read-ahead")
    calls.clear(), draws.clear()
    at.button(key="w_ckpt_next").click()
    run_ok(at)
    assert "mini-epoch **2**" in texts(at, "markdown")
    assert not [me for me, t in calls if me == 2]  # not extracted again
    assert not [t for t in draws if not t.startswith("ade-read-ahead")]  # the grid was not drawn again
    # the view of mini-epoch 2 drawn ahead was used (that of 3 may be drawn ahead by now)
    assert not [k for k in cache.read_ahead_state().drawings if k[2][0] == 2]
    _clear_image_caches()


def test_read_ahead_failures_and_limits():
    from concurrent.futures import ThreadPoolExecutor

    from core.engine.readahead import ReadAhead
    from ui.cache import ACTIVATION_ENTRIES

    ra = ReadAhead(ACTIVATION_ENTRIES)
    ra.pool = ThreadPoolExecutor(max_workers=1)

    def boom():
        raise OSError("checkpoint truncated")

    assert ra.submit(("bad",), boom)
    assert ra.take(("bad",)) is None  # the caller computes it and reports the error itself
    assert not ra.submit(("bad",), boom)  # just computed by the caller: not again
    assert ra.take(("never",)) is None
    gate = __import__("threading").Event()
    assert ra.submit(("slow",), lambda: gate.wait(10) and {"x": 1})
    assert ra.submit(("a",), lambda: {"a": 1}) and ra.submit(("b",), lambda: {"b": 2})  # "slow" dropped from the list
    gate.set()
    assert ra.take(("slow",)) is None and ra.take(("b",)) == {"b": 2}
    ra.keep_drawings({("k", i): "<div>" for i in range(10)})
    assert len(ra.drawings) == 8 and ra.drawn(("k", 9)) == "<div>" and ra.drawn(("k", 9)) is None
    assert ra.drawn(("k", 0)) is None  # the oldest were dropped
    assert ra.known(("b",)) and not ra.known(("c",))  # taken lately / never asked
    gate2, calls = __import__("threading").Event(), []
    ra.prepare(("tap", "x"), lambda: calls.append(1) or gate2.wait(10))
    ra.prepare(("tap", "x"), lambda: calls.append(2))  # still running: not again
    gate2.set()
    ra.pool.submit(lambda: None).result()
    assert calls == [1] and ra.idle()
    ra.prepare(("tap", "x"), lambda: calls.append(3))  # done (e.g. its extractor was evicted since): again
    ra.pool.submit(lambda: None).result()
    assert calls == [1, 3]
    ra.pool.shutdown(wait=True)


def test_grid_computes_only_the_layer_shown_for_a_new_checkpoint(app_env, monkeypatch):
    """Without a background result, a new checkpoint is computed for the layer shown only (once prepared)."""
    import time

    from core.engine.engine import RunEngine
    from ui import cache, state

    _clear_image_caches()
    monkeypatch.setattr(state, "READ_AHEAD", False)
    at = open_app("grid", {"run": "tiny", "ckpt": "0", "layer": "stem_conv"})
    deadline = time.monotonic() + 30
    while not cache.read_ahead_idle() and time.monotonic() < deadline:  # the one-tap extractor is built
        time.sleep(0.01)
    full, one = [], []
    real_full, real_one = RunEngine.activations, RunEngine.tap_activations
    monkeypatch.setattr(RunEngine, "activations", lambda self, *a: full.append(1) or real_full(self, *a))
    monkeypatch.setattr(RunEngine, "tap_activations", lambda self, *a: one.append(a[-1]) or real_one(self, *a))
    scrub_slider(at).set_value(2)
    run_ok(at)
    assert one == ["stem_conv"] and not full
    assert "mini-epoch **2**" in texts(at, "markdown")
    _clear_image_caches()
