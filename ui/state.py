"""The shared sidebar (run, trust opt-in, checkpoint scrubber, probe image) and the facade the pages import.

Persistence and the URL live in ``ui.persist``, page routing in ``ui.routing``, the scrubber in
``ui.scrubber`` and the probe image picker in ``ui.probe_picker``; their public names are re-exported here.
"""
from __future__ import annotations

import functools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import streamlit as st

from core.run.remote import as_root, runs_root_arg
from core.run.runs import Checkpoint, Run, RunError
from ui import cache, grid_cache, model_options
from ui.persist import (QUERY_KEYS, SCRUB_WIDGETS, SETTING_KEYS, current_run, keep, keep_run_param, kept,
                        kept_list, moved, pending, pkey, read_query_params, seed, set_query, wkey)
from ui.probe_picker import PHOTO_EXTS, PHOTOS_DIR, SOURCES, ProbeImage, photos, probe_label, select_image
from ui.pages_registry import PAGES
from ui.routing import goto, route
from ui.scrubber import (PLAY_SPEEDS, current_checkpoint, play_state, player, scrub, scrub_widgets,
                         scrubber, select_checkpoint)

__all__ = [
    "PAGES", "PHOTOS_DIR", "PHOTO_EXTS", "PLAY_SPEEDS", "QUERY_KEYS", "SCRUB_WIDGETS", "SETTING_KEYS", "SOURCES",
    "FRAGMENT_TIMES", "READ_AHEAD", "ProbeImage", "Selection", "current_checkpoint", "current_run", "engine",
    "goto", "keep", "keep_run_param", "kept", "kept_list", "moved", "pending", "photos", "pkey", "play_state", "player",
    "probe_label", "read_ahead_next", "read_query_params", "route", "run_problems", "runs_root", "scrub",
    "scrub_widgets", "scrubber", "seed", "select_checkpoint", "select_image", "select_layer", "select_run",
    "set_query", "sidebar", "timed_fragment", "trust_box", "trusted", "wkey", "x_axis",
]


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


def runs_root() -> Path | str:
    """``--runs-root`` after ``--`` on the streamlit command line, else ``$ADE_RUNS_ROOT``, else data/runs.

    A URL (``s3://...``) stays a string: runs are then read through local mirrors (core.run.remote).
    """
    argv = sys.argv[1:]
    if "--runs-root" in argv:
        i = argv.index("--runs-root")
        if i + 1 < len(argv):
            return as_root(argv[i + 1])
    return runs_root_arg()


# ---- run ---------------------------------------------------------------------------------------


def select_run() -> Run | None:
    """Sidebar run picker; the choice persists across pages and lives in the ``run`` query parameter."""
    root = runs_root()
    try:
        infos = cache.runs_list(str(root))
    except RunError as e:  # a URL root that cannot be listed (credentials, bucket, network)
        st.sidebar.error(f"The runs under `{root}` cannot be listed: {e}")
        return None
    if not infos:
        st.sidebar.info(f"No runs under `{root}`. Create the demo runs with `make demo`, "
                        "or train one: `python -m core train my-run`.")
        return None
    names = [i.name for i in infos]
    errors = {i.name: i.error for i in infos}
    wanted = pending("run")
    if wanted is not None and wanted not in names:
        st.sidebar.warning(f"Run {wanted!r} from the link is not under the runs root; showing another run.")
        wanted = None
    cur = wanted if wanted is not None else st.session_state.get(pkey("run"))
    if cur not in names:
        cur = names[0]
    seed("run", cur)
    name = st.sidebar.selectbox("Run", names, key=wkey("run"), on_change=keep, args=("run",),
                                format_func=lambda n: n + ("  ⚠" if errors.get(n) else ""))
    set_query("run", name)
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
    return bool(st.session_state.get(pkey(f"trust:{run.name}"), False))


def trust_box(run: Run) -> None:
    """The per-run "I trust this file" checkbox (shown once the run was found to need it)."""
    if not st.session_state.get(f"_needs_trust:{run.name}"):
        return
    name = f"trust:{run.name}"
    seed(name, trusted(run))
    st.sidebar.checkbox("I trust this file", key=wkey(name), on_change=keep, args=(name,),
                        help="The architecture holds Python code (Lambda layers) that runs when it is loaded.")


# ---- layer ---------------------------------------------------------------------------------------


def select_layer(options: Sequence[str], *, label: str = "Layer", where: Any = None,
                 format_func: Callable[[str], str] = str, default: str | None = None) -> str | None:
    """Layer picker shared by the pages (persisted, ``layer`` query parameter)."""
    where = where if where is not None else st
    options = list(options)
    if not options:
        where.info("No layer to show.")
        return None
    wanted = pending("layer")
    cur = st.session_state.get(pkey("layer"))
    if wanted is not None:
        if wanted in options:
            st.session_state[pkey("layer")] = cur = wanted
        else:
            where.warning(f"Layer {wanted!r} from the link is not a layer of this run (or not shown "
                          "on this page); showing another layer.")
    if cur not in options:  # keep the persisted choice for pages that list it
        cur = default if default in options else options[0]
    st.session_state[wkey("layer")] = cur
    layer = where.selectbox(label, options, key=wkey("layer"), on_change=keep, args=("layer",),
                            format_func=format_func)
    set_query("layer", layer)
    return layer


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
    model_options.check_model(run, trusted(run))
    ckpts = run.checkpoints()
    run_problems(run)
    sel = Selection(runs_root(), run, ckpts, trust=trusted(run))
    if checkpoint == "fragment":
        sel.scrub_box = st.sidebar.container()  # filled by ``scrub`` inside the page's fragment
        if not ckpts:
            current_checkpoint(ckpts, sel.scrub_box)  # says there is none
        sel.play_state = play_state()
        options = sel.mini_epochs
        if sel.play_state[0] and len(options) > 1:
            player(options, PLAY_SPEEDS[sel.play_state[1]])
    elif checkpoint:
        sel.ckpt = select_checkpoint(ckpts)
    else:
        cur = st.session_state.get(pkey("ckpt"))
        if cur is not None:
            set_query("ckpt", cur)
    if image:
        sel.image = select_image(run)
    model_options.options(run, sel.image)
    return sel


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


def read_ahead_next(sel: Selection, view: grid_cache.ShownGrid | None = None) -> None:
    """Extract the image at the checkpoint after this one in the background (Next and Play land there).

    ``view``: also draw the channel grid of that checkpoint as the page shows it now.
    """
    if sel.ckpt is None or sel.image is None:
        return
    after = [c for c in sel.ckpts if c.mini_epoch > sel.ckpt.mini_epoch]
    if after and READ_AHEAD:
        grid_cache.read_ahead(sel.path, cache.arch_mtime(sel.run), cache.ckpt_key(after[0]), sel.image.key, sel.trust,
                         sel.image.pixels, view)


def x_axis(where: Any = None) -> str:
    """The shared x-axis choice of the charts: 'mini_epoch' or 'images_seen'."""
    where = where if where is not None else st
    return where.radio("x axis", ["mini_epoch", "images_seen"], horizontal=True,
                       format_func=lambda v: v.replace("_", " "),
                       **kept("x_axis", "mini_epoch", ["mini_epoch", "images_seen"]))
