"""The sidebar's checkpoint scrubber: slider, Previous / Next and Play, and its ``ckpt`` query parameter."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import streamlit as st

from core.run.runs import Checkpoint
from ui.persist import keep, moved, pending, pkey, seed, set_query, wkey

if TYPE_CHECKING:
    from ui.state import Selection

PLAY_SPEEDS = {"0.5 s": 0.5, "1 s": 1.0, "2 s": 2.0}


def _step(delta: int, options: list[int]) -> None:
    cur = st.session_state.get(pkey("ckpt"))
    i = options.index(cur) if cur in options else len(options) - 1
    st.session_state[pkey("ckpt")] = options[min(max(i + delta, 0), len(options) - 1)]
    moved()


def _toggle_play(options: list[int], key: str) -> None:
    if not keep("play", key):
        return
    if st.session_state.get(pkey("play")) and st.session_state.get(pkey("ckpt")) == options[-1]:
        st.session_state[pkey("ckpt")] = options[0]  # play from the start when at the end
        moved()
    st.session_state["_play_t"] = time.monotonic()


def select_checkpoint(ckpts: list[Checkpoint], box: Any = None, tick: bool = True) -> Checkpoint | None:
    """Sidebar scrubber over the run's mini-epochs: slider, Previous / Next and Play; ``ckpt`` query parameter.

    ``box``: the sidebar container to write into (default: a new one). ``tick``: start Play's
    timer here (a page that scrubs in a fragment starts it in its full run, see ``state.sidebar``).
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
    wanted = pending("ckpt")
    cur = st.session_state.get(pkey("ckpt"))
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
    seed("ckpt", cur)
    if url:
        set_query("ckpt", cur)
    return ckpts[options.index(cur)]


def scrubber(ckpts: list[Checkpoint], box: Any, tick: bool = True) -> None:
    """The scrubber's widgets for the checkpoint ``current_checkpoint`` chose (call that first)."""
    options = [c.mini_epoch for c in ckpts]
    cur = st.session_state[pkey("ckpt")]
    if len(options) == 1:
        box.caption(f"Checkpoint: mini-epoch {options[0]} (the only one)")
        return
    key = wkey("ckpt")
    box.select_slider("Checkpoint (mini-epoch)", options=options, key=key, on_change=keep,
                      args=("ckpt", key), help="Arrow keys move the slider; Play steps through every checkpoint.")
    b1, b2, b3 = box.columns([1, 1, 1.2])
    i = options.index(cur)
    b1.button("◀ Prev", key="w_ckpt_prev", on_click=_step, args=(-1, options), disabled=i == 0, width="stretch")
    b2.button("Next ▶", key="w_ckpt_next", on_click=_step, args=(1, options), disabled=i == len(options) - 1,
              width="stretch")
    seed("play", bool(st.session_state.get(pkey("play"), False)))
    key = wkey("play")
    b3.toggle("Play", key=key, on_change=_toggle_play, args=(options, key))
    playing, speed = play_state()
    if playing:
        seed("speed", speed)
        box.radio("Step every", list(PLAY_SPEEDS), key=wkey("speed"), on_change=keep, args=("speed",),
                  horizontal=True)
        if tick:
            player(options, PLAY_SPEEDS[st.session_state[pkey("speed")]])


def player(options: list[int], interval: float) -> None:
    """While Play is on, a fragment re-runs every ``interval`` s and advances the checkpoint."""

    @st.fragment(run_every=interval)
    def tick() -> None:
        if not st.session_state.get(pkey("play")):
            return
        last = st.session_state.get("_play_t", 0.0)
        if time.monotonic() - last < 0.8 * interval:
            return  # this is the full run that the previous tick started
        cur = st.session_state.get(pkey("ckpt"))
        i = options.index(cur) if cur in options else -1
        st.session_state["_play_t"] = time.monotonic()
        if i + 1 >= len(options):
            st.session_state[pkey("play")] = False
        else:
            st.session_state[pkey("ckpt")] = options[i + 1]
        moved()
        st.rerun(scope="app")

    tick()


def play_state() -> tuple[bool, str]:
    """(playing, speed) as kept in the session."""
    speed = st.session_state.get(pkey("speed"), "1 s")
    return bool(st.session_state.get(pkey("play"), False)), speed if speed in PLAY_SPEEDS else "1 s"


def scrub(sel: Selection) -> Checkpoint | None:
    """The checkpoint of a ``sidebar(checkpoint="fragment")`` page, inside its ``st.fragment``; sets ``sel.ckpt``.

    Call ``scrub_widgets`` at the end of the fragment: the browser then gets nothing to draw
    while the fragment reads weights and runs the model (less contention on a shared machine).
    Play's timer lives in the full run: switching Play or its speed reruns the whole page.
    """
    if play_state() != sel.play_state:
        st.rerun(scope="app")
    sel.ckpt = current_checkpoint(sel.ckpts, sel.scrub_box, url=False)
    return sel.ckpt


def scrub_widgets(sel: Selection) -> None:
    """The scrubber's widgets of a ``scrub`` page, in its place in the sidebar, and the checkpoint in the URL."""
    if sel.ckpt is not None:
        scrubber(sel.ckpts, sel.scrub_box, tick=False)
        set_query("ckpt", sel.ckpt.mini_epoch)  # last: a URL change makes the browser work
