"""Shared sidebar controls kept across pages and mirrored in the URL's query parameters."""
from __future__ import annotations

import functools
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import streamlit as st
from streamlit.errors import StreamlitAPIException

from core.run.runs import Checkpoint, Run, RunError, runs_root_from_env
from ui import cache

PHOTOS_DIR = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "photos"
PHOTO_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
QUERY_KEYS = ("run", "ckpt", "layer", "page")
PLAY_SPEEDS = {"0.5 s": 0.5, "1 s": 1.0, "2 s": 2.0}
SOURCES = {"probe": "Probe set", "photo": "Built-in photo", "upload": "Upload"}


@dataclass(frozen=True)
class ProbeImage:
    """The probe image chosen in the sidebar: ``pixels`` uint8 (H, W, C) at the model's input size.

    ``key`` identifies the content (cache key); ``probe_index`` is set for images of the run's probe set.
    """

    key: str
    label: str
    kind: str
    pixels: np.ndarray
    probe_index: int | None = None


@dataclass
class Selection:
    """What the sidebar selected: run, its checkpoints, the current checkpoint and probe image."""

    root: Path
    run: Run
    ckpts: list[Checkpoint]
    ckpt: Checkpoint | None = None
    image: ProbeImage | None = None
    trust: bool = False
    scrub_box: Any = None  # sidebar container the page's fragment writes the scrubber into (``scrub``)
    play_state: tuple = ()  # (playing, speed) when the page ran in full: a change needs a full rerun

    @property
    def path(self) -> str:
        return str(self.run.path)

    @property
    def stamp(self) -> tuple:
        return cache.ckpt_stamp(self.ckpts)

    @property
    def mini_epochs(self) -> list[int]:
        return [c.mini_epoch for c in self.ckpts]


# ---- persistence helpers -----------------------------------------------------------------------
# Widgets keep their values only while rendered; every shared control therefore has a persisted
# copy ``_p_<name>`` (plain session state) that is written on change and seeded into the widget.


def _p(name: str) -> str:
    return f"_p_{name}"


def _w(name: str) -> str:
    return f"w_{name}"


def _keep(name: str) -> None:
    """on_change callback: copy the widget's value into its persisted key."""
    st.session_state[_p(name)] = st.session_state.get(_w(name))


def _seed(name: str, value: Any) -> None:
    """Set the widget's value (before it is created in this run) and its persisted copy."""
    st.session_state[_p(name)] = value
    st.session_state[_w(name)] = value


def kept(name: str, default: Any, options: Sequence[Any] | None = None,
         valid: Callable[[Any], bool] | None = None) -> dict[str, Any]:
    """Widget kwargs that keep a page setting across page switches: ``st.radio(..., **kept("x", "a"))``.

    The persisted value is seeded into the widget (falling back to ``default`` when it is not
    among ``options``); pass no ``value``/``index`` to the widget.
    """
    v = st.session_state.get(_p(name), default)
    if (options is not None and v not in options) or (valid is not None and not valid(v)):
        v = default
    _seed(name, v)
    return {"key": _w(name), "on_change": _keep, "args": (name,)}


def _set_query(key: str, value: Any) -> None:
    v = str(value)
    if st.query_params.get(key) != v:
        st.query_params[key] = v


def _pending(key: str) -> str | None:
    """A query parameter read on first load and not yet applied (applied once, then dropped)."""
    return st.session_state.pop(f"_qp_{key}", None)


def read_query_params() -> None:
    """On a session's first run, remember run/ckpt/layer/page from the URL for the controls to apply."""
    if st.session_state.get("_qp_read"):
        return
    st.session_state["_qp_read"] = True
    for k in QUERY_KEYS:
        v = st.query_params.get(k)
        if v not in (None, ""):
            st.session_state[f"_qp_{k}"] = v


PAGES_DIR = Path(__file__).resolve().parents[1] / "pages"
_PAGE_RE = re.compile(r"^[a-z][a-z0-9_]{0,40}$")  # a page is a plain file name in pages/, nothing else


def _leave_pages_folder_mode() -> None:
    """Rerun through explorer.py's ``st.navigation`` when Streamlit ran this page in "pages folder" mode.

    Streamlit decides per process whether a ``pages/`` folder next to the main script means the
    old multipage mode; only the public ``st.navigation`` call in explorer.py switches it off. When
    the first URL a fresh server gets is a page (``/grid``), explorer.py never runs, so every session
    would stay in the old mode (file-name navigation, no explorer.py). AppTest resets it before every run.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


def route(page: str) -> None:
    """Apply a pending page jump (first load's ``page`` parameter, or a finding's button), then write ``page``.

    Pages are addressed by their file name: ``grid`` is ``pages/grid.py``. Call it first in every page.
    """
    _leave_pages_folder_mode()
    target = st.session_state.pop("_goto", None) or _pending("page")
    if target and target != page:
        if _PAGE_RE.match(target) and (PAGES_DIR / f"{target}.py").is_file():
            try:
                st.switch_page(f"pages/{target}.py")
            except StreamlitAPIException:  # a page file that is not in the navigation
                pass
        st.sidebar.warning(f"Page {target!r} from the link does not exist; showing this page.")
    _set_query("page", page)


def runs_root() -> Path:
    """``--runs-root`` after ``--`` on the streamlit command line, else ``$ADE_RUNS_ROOT``, else data/runs."""
    argv = sys.argv[1:]
    if "--runs-root" in argv:
        i = argv.index("--runs-root")
        if i + 1 < len(argv):
            return Path(argv[i + 1])
    return runs_root_from_env()


# ---- run ---------------------------------------------------------------------------------------


def select_run() -> Run | None:
    """Sidebar run picker; the choice persists across pages and lives in the ``run`` query parameter."""
    root = runs_root()
    infos = cache.runs_list(str(root))
    if not infos:
        st.sidebar.info(f"No runs under `{root}`. Create the demo runs with `make demo`, "
                        "or train one: `python -m core train my-run`.")
        return None
    names = [i.name for i in infos]
    errors = {i.name: i.error for i in infos}
    wanted = _pending("run")
    if wanted is not None and wanted not in names:
        st.sidebar.warning(f"Run {wanted!r} from the link is not under the runs root; showing another run.")
        wanted = None
    cur = wanted if wanted is not None else st.session_state.get(_p("run"))
    if cur not in names:
        cur = names[0]
    _seed("run", cur)
    name = st.sidebar.selectbox("Run", names, key=_w("run"), on_change=_keep, args=("run",),
                                format_func=lambda n: n + ("  ⚠" if errors.get(n) else ""))
    _set_query("run", name)
    if errors.get(name):
        st.error(f"This run cannot be opened: {errors[name]}")
        return None
    try:
        return cache.run(str(root), name)
    except RunError as e:
        st.error(f"This run cannot be opened: {e}")
        return None


def engine(run: Run):
    """The run's extraction engine, or None after showing why (with the trust opt-in when needed).

    An architecture with Python code (Lambda layers) needs ``trust=True``; the user opts in
    per run with the "I trust this file" checkbox.
    """
    from core.run.loading import ModelLoadError, UnsafeModelError

    trust = trusted(run)
    try:
        return cache.engine(str(run.path), cache.arch_mtime(run), trust)
    except UnsafeModelError as e:
        if not st.session_state.get(f"_needs_trust:{run.name}"):
            st.session_state[f"_needs_trust:{run.name}"] = True
            st.rerun()  # so the sidebar shows the "I trust this file" box
        st.warning(f"{e}\n\nTick **I trust this file** in the sidebar if you know where this model "
                   "comes from; its code then runs inside this app.")
        return None
    except (ModelLoadError, RunError, ValueError, OSError) as e:
        st.error(f"The architecture of this run could not be loaded: {e}")
        return None


def trusted(run: Run) -> bool:
    return bool(st.session_state.get(_p(f"trust:{run.name}"), False))


def trust_box(run: Run) -> None:
    """The per-run "I trust this file" checkbox (shown once the run was found to need it)."""
    if not st.session_state.get(f"_needs_trust:{run.name}"):
        return
    name = f"trust:{run.name}"
    _seed(name, trusted(run))
    st.sidebar.checkbox("I trust this file", key=_w(name), on_change=_keep, args=(name,),
                        help="The architecture holds Python code (Lambda layers) that runs when it is loaded.")


# ---- checkpoint scrubber -------------------------------------------------------------------------


def _step(delta: int, options: list[int]) -> None:
    cur = st.session_state.get(_p("ckpt"))
    i = options.index(cur) if cur in options else len(options) - 1
    st.session_state[_p("ckpt")] = options[min(max(i + delta, 0), len(options) - 1)]


def _toggle_play(options: list[int]) -> None:
    _keep("play")
    if st.session_state.get(_p("play")) and st.session_state.get(_p("ckpt")) == options[-1]:
        st.session_state[_p("ckpt")] = options[0]  # play from the start when at the end
    st.session_state["_play_t"] = time.monotonic()


def select_checkpoint(run: Run, ckpts: list[Checkpoint], box: Any = None, tick: bool = True) -> Checkpoint | None:
    """Sidebar scrubber over the run's mini-epochs: slider, Previous / Next and Play; ``ckpt`` query parameter.

    ``box``: the sidebar container to write into (default: a new one). ``tick``: start Play's
    timer here (a page that scrubs in a fragment starts it in its full run, see ``sidebar``).
    """
    box = box if box is not None else st.sidebar.container()
    ckpt = current_checkpoint(ckpts, box)
    if ckpt is not None:
        scrubber(ckpts, box, tick)
    return ckpt


def current_checkpoint(ckpts: list[Checkpoint], box: Any, url: bool = True) -> Checkpoint | None:
    """The scrubber's checkpoint: the link's ``ckpt`` on a first load, else the kept one, else the last.

    ``url``: also put it in the URL now (else the caller does, see ``scrub_widgets``).
    """
    if not ckpts:
        box.info("This run has no checkpoint yet.")
        return None
    options = [c.mini_epoch for c in ckpts]
    wanted = _pending("ckpt")
    cur = st.session_state.get(_p("ckpt"))
    if wanted is not None:
        try:
            w = int(wanted)
            if w not in options:
                raise ValueError
            cur = w
        except ValueError:
            box.warning(f"Checkpoint {wanted!r} from the link does not exist in this run; "
                        f"showing mini-epoch {options[-1]}.")
            cur = options[-1]
    if cur not in options:
        cur = options[-1]
    _seed("ckpt", cur)
    if url:
        _set_query("ckpt", cur)
    return ckpts[options.index(cur)]


def scrubber(ckpts: list[Checkpoint], box: Any, tick: bool = True) -> None:
    """The scrubber's widgets for the checkpoint ``current_checkpoint`` chose (call that first)."""
    options = [c.mini_epoch for c in ckpts]
    cur = st.session_state[_p("ckpt")]
    if len(options) == 1:
        box.caption(f"Checkpoint: mini-epoch {options[0]} (the only one)")
        return
    box.select_slider("Checkpoint (mini-epoch)", options=options, key=_w("ckpt"), on_change=_keep,
                      args=("ckpt",), help="Arrow keys move the slider; Play steps through every checkpoint.")
    b1, b2, b3 = box.columns([1, 1, 1.2])
    i = options.index(cur)
    b1.button("◀ Prev", key="w_ckpt_prev", on_click=_step, args=(-1, options), disabled=i == 0, width="stretch")
    b2.button("Next ▶", key="w_ckpt_next", on_click=_step, args=(1, options), disabled=i == len(options) - 1,
              width="stretch")
    _seed("play", bool(st.session_state.get(_p("play"), False)))
    b3.toggle("Play", key=_w("play"), on_change=_toggle_play, args=(options,))
    playing, speed = _play_state()
    if playing:
        _seed("speed", speed)
        box.radio("Step every", list(PLAY_SPEEDS), key=_w("speed"), on_change=_keep, args=("speed",),
                  horizontal=True)
        if tick:
            _player(options, PLAY_SPEEDS[st.session_state[_p("speed")]])


def _player(options: list[int], interval: float) -> None:
    """While Play is on, a fragment re-runs every ``interval`` s and advances the checkpoint."""

    @st.fragment(run_every=interval)
    def tick() -> None:
        if not st.session_state.get(_p("play")):
            return
        last = st.session_state.get("_play_t", 0.0)
        if time.monotonic() - last < 0.8 * interval:
            return  # this is the full run that the previous tick started
        cur = st.session_state.get(_p("ckpt"))
        i = options.index(cur) if cur in options else -1
        st.session_state["_play_t"] = time.monotonic()
        if i + 1 >= len(options):
            st.session_state[_p("play")] = False
        else:
            st.session_state[_p("ckpt")] = options[i + 1]
        st.rerun(scope="app")

    tick()


# ---- probe image -----------------------------------------------------------------------------


def photos() -> list[Path]:
    """The built-in photos (shared/testdata/photos next to the repository), if that folder exists."""
    if not PHOTOS_DIR.is_dir():
        return []
    return sorted(p for p in PHOTOS_DIR.iterdir() if p.suffix.lower() in PHOTO_EXTS)


def _on_upload() -> None:
    f = st.session_state.get(_w("upload"))
    if f is None:
        st.session_state.pop(_p("upload"), None)
    else:
        data = f.getvalue()
        st.session_state[_p("upload")] = {"name": f.name, "data": data, "digest": cache.digest(data)}


def _probe_label(i: int, y: np.ndarray, classes: Sequence[str]) -> str:
    lab = int(y[i]) if i < len(y) else -1
    name = classes[lab] if 0 <= lab < len(classes) else (str(lab) if lab >= 0 else "?")
    return f"#{i} · {name}"


def select_image(run: Run) -> ProbeImage | None:
    """Sidebar probe image: one of the run's probe set (default #0), a built-in photo, or an upload."""
    m = run.manifest
    size, channels = (m.input_height, m.input_width), m.input_channels
    try:
        x, y = cache.probe_set(str(run.path), cache.probes_mtime(run))
    except RunError as e:
        st.sidebar.warning(str(e))
        x, y = np.zeros((0, *m.input_shape), np.uint8), np.zeros((0,), np.int64)
    pics = photos()
    sources = [s for s in SOURCES if (s != "probe" or len(x)) and (s != "photo" or pics)]
    src = st.session_state.get(_p("source"), sources[0])
    _seed("source", src if src in sources else sources[0])
    box = st.sidebar.container()
    src = box.radio("Probe image", sources, key=_w("source"), on_change=_keep, args=("source",),
                    format_func=SOURCES.get, horizontal=True)
    image: ProbeImage | None = None
    if src == "upload":
        box.file_uploader("Image file (JPEG, PNG, WebP, BMP, GIF, TIFF…)", key=_w("upload"),
                          on_change=_on_upload)
        up = st.session_state.get(_p("upload"))
        if up is None:
            box.caption("No image uploaded yet: showing probe image #0.")
        else:
            px, err = cache.decode_image(f"upload:{up['digest']}", size, channels, up["data"])
            if err:
                box.error(err)
                box.caption("Showing probe image #0 instead.")
            else:
                image = ProbeImage(f"upload:{up['digest']}", f"upload {up['name']}", "upload", px)
    elif src == "photo":
        names = [p.name for p in pics]
        cur = st.session_state.get(_p("photo"))
        _seed("photo", cur if cur in names else names[0])
        name = box.selectbox("Photo", names, key=_w("photo"), on_change=_keep, args=("photo",))
        p = PHOTOS_DIR / name
        key = f"photo:{name}:{cache._mtime(p)}"
        px, err = cache.decode_image(key, size, channels, str(p))
        if err:
            box.error(err)
        else:
            image = ProbeImage(f"photo:{name}", f"photo {name}", "photo", px)
    if image is None and len(x):
        idx = st.session_state.get(_p("probe"), 0) if src == "probe" else 0
        idx = idx if isinstance(idx, int) and 0 <= idx < len(x) else 0
        if src == "probe":
            _seed("probe", idx)
            idx = box.selectbox("Probe-set image", list(range(len(x))), key=_w("probe"), on_change=_keep,
                                args=("probe",), format_func=lambda i: _probe_label(i, y, m.class_names))
        image = ProbeImage(f"probe:{idx:03d}", _probe_label(idx, y, m.class_names), "probe", x[idx], idx)
    if image is not None:
        box.image(cache.image_png(cache.digest(image.pixels.tobytes()), image.pixels), caption=image.label, width=96,
                  output_format="PNG")
    else:
        box.info("No probe image: this run has no probe set; upload an image.")
    return image


# ---- layer ---------------------------------------------------------------------------------------


def select_layer(options: Sequence[str], *, label: str = "Layer", where: Any = None,
                 format_func: Callable[[str], str] = str, default: str | None = None) -> str | None:
    """Layer picker shared by the pages (persisted, ``layer`` query parameter)."""
    where = where if where is not None else st
    options = list(options)
    if not options:
        where.info("No layer to show.")
        return None
    wanted = _pending("layer")
    cur = st.session_state.get(_p("layer"))
    if wanted is not None:
        if wanted in options:
            st.session_state[_p("layer")] = cur = wanted
        else:
            where.warning(f"Layer {wanted!r} from the link is not a layer of this run (or not shown "
                          "on this page); showing another layer.")
    if cur not in options:  # keep the persisted choice for pages that list it
        cur = default if default in options else options[0]
    st.session_state[_w("layer")] = cur
    layer = where.selectbox(label, options, key=_w("layer"), on_change=_keep, args=("layer",),
                            format_func=format_func)
    _set_query("layer", layer)
    return layer


def keep_layer_param() -> None:
    """On pages without a layer picker, keep the persisted layer in the URL."""
    cur = st.session_state.get(_p("layer"))
    if cur:
        _set_query("layer", cur)


def goto(page: str, *, layer: str | None = None, ckpt: int | None = None) -> None:
    """Button callback target: set the shared layer / checkpoint, then switch page."""
    if layer is not None:
        st.session_state[_p("layer")] = layer
    if ckpt is not None:
        st.session_state[_p("ckpt")] = ckpt
    st.session_state["_goto"] = page


def run_problems(run: Run) -> None:
    """Problems found while listing the run (missing or empty checkpoints, torn history rows), in the sidebar."""
    try:
        _, hist_problems = cache.history(str(run.path), cache.dir_stamp(run.path))
    except RunError as e:
        hist_problems = [str(e)]
    problems = list(dict.fromkeys([*run.problems, *hist_problems]))
    if problems:
        with st.sidebar.expander(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} with this run",
                                 icon=":material/warning:"):
            for p in problems:
                st.warning(p)


# ---- everything at once ------------------------------------------------------------------------


def sidebar(page: str, *, image: bool = True, checkpoint: bool | str = True) -> Selection | None:
    """The shared sidebar of page ``page`` (its file name): run (+ trust opt-in), checkpoint scrubber, probe image.

    ``checkpoint="fragment"`` keeps the scrubber's place in the sidebar for the page's
    ``st.fragment`` to fill with ``scrub``: moving it then reruns only that fragment.
    Also reads the URL's query parameters on a session's first run and writes them back.
    """
    read_query_params()
    route(page)
    run = select_run()
    if run is None:
        return None
    trust_box(run)
    ckpts = run.checkpoints()
    run_problems(run)
    sel = Selection(runs_root(), run, ckpts, trust=trusted(run))
    if checkpoint == "fragment":
        sel.scrub_box = st.sidebar.container()  # filled by ``scrub`` inside the page's fragment
        if not ckpts:
            current_checkpoint(ckpts, sel.scrub_box)  # says there is none
        sel.play_state = _play_state()
        options = sel.mini_epochs
        if sel.play_state[0] and len(options) > 1:
            _player(options, PLAY_SPEEDS[sel.play_state[1]])
    elif checkpoint:
        sel.ckpt = select_checkpoint(run, ckpts)
    else:
        cur = st.session_state.get(_p("ckpt"))
        if cur is not None:
            _set_query("ckpt", cur)
    if image:
        sel.image = select_image(run)
    return sel


def _play_state() -> tuple[bool, str]:
    speed = st.session_state.get(_p("speed"), "1 s")
    return bool(st.session_state.get(_p("play"), False)), speed if speed in PLAY_SPEEDS else "1 s"


def scrub(sel: Selection) -> Checkpoint | None:
    """The checkpoint of a ``sidebar(checkpoint="fragment")`` page, inside its ``st.fragment``; sets ``sel.ckpt``.

    Call ``scrub_widgets`` at the end of the fragment: the browser then gets nothing to draw
    while the fragment reads weights and runs the model (less contention on a shared machine).
    Play's timer lives in the full run: switching Play or its speed reruns the whole page.
    """
    if _play_state() != sel.play_state:
        st.rerun(scope="app")
    sel.ckpt = current_checkpoint(sel.ckpts, sel.scrub_box, url=False)
    return sel.ckpt


def scrub_widgets(sel: Selection) -> None:
    """The scrubber's widgets of a ``scrub`` page, in its place in the sidebar, and the checkpoint in the URL."""
    if sel.ckpt is not None:
        scrubber(sel.ckpts, sel.scrub_box, tick=False)
        _set_query("ckpt", sel.ckpt.mini_epoch)  # last: a URL change makes the browser work


#: Durations in seconds of ``timed_fragment`` bodies by name, recorded when not None (bench/bench_pages.py).
FRAGMENT_TIMES: dict[str, list[float]] | None = None


def timed_fragment(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """``st.fragment`` whose body's duration is recorded in ``FRAGMENT_TIMES[name]`` when that is on."""

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        @functools.wraps(fn)  # the fragment's identity is its function's name
        def body() -> None:
            t = time.perf_counter()
            try:
                fn()
            finally:
                if FRAGMENT_TIMES is not None:
                    FRAGMENT_TIMES.setdefault(name, []).append(time.perf_counter() - t)

        return st.fragment(body)

    return wrap


#: Extract the next checkpoint in the background (the benchmarks turn it off to time cold steps;
#: ``ADE_READ_AHEAD=0`` does it for a server).
READ_AHEAD = os.environ.get("ADE_READ_AHEAD", "1") != "0"


def read_ahead_next(sel: Selection, view: cache.GridView | None = None) -> None:
    """Extract the image at the checkpoint after this one in the background (Next and Play land there).

    ``view``: also draw the channel grid of that checkpoint as the page shows it now.
    """
    if sel.ckpt is None or sel.image is None:
        return
    after = [c for c in sel.ckpts if c.mini_epoch > sel.ckpt.mini_epoch]
    if after and READ_AHEAD:
        cache.read_ahead(sel.path, cache.arch_mtime(sel.run), cache.ckpt_key(after[0]), sel.image.key, sel.trust,
                         sel.image.pixels, view)


def x_axis(where: Any = None) -> str:
    """The shared x-axis choice of the charts: 'mini_epoch' or 'images_seen'."""
    where = where if where is not None else st
    return where.radio("x axis", ["mini_epoch", "images_seen"], horizontal=True,
                       format_func=lambda v: v.replace("_", " "),
                       **kept("x_axis", "mini_epoch", ["mini_epoch", "images_seen"]))
