"""Shared controls that persist across pages and mirror themselves in the URL's query parameters.

Widgets keep their values only while rendered; every shared control therefore has a persisted
copy ``_p_<name>`` (plain session state) that is written on change and seeded into the widget.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import streamlit as st

QUERY_KEYS = ("run", "ckpt", "layer", "page")
#: Page settings that a shared link carries too (``kept(..., url=...)``) and the probe image choice.
SETTING_KEYS = ("scale", "cmap", "sort", "tile", "source", "probe", "photo", "block", "wvar", "wtop", "wlayers")
#: The scrubber's widgets, whose values the app also moves itself (Play, Prev / Next, a finding's button).
SCRUB_WIDGETS = ("ckpt", "play")


def pkey(name: str) -> str:
    """The session-state key of a shared control's persisted value."""
    return f"_p_{name}"


def wkey(name: str) -> str:
    """The widget key of a shared control; the scrubber's carry the generation ``moved`` counts."""
    gen = st.session_state.get("_scrub_gen", 0) if name in SCRUB_WIDGETS else 0
    return f"w_{name}.{gen}" if gen else f"w_{name}"


def moved() -> None:
    """The app moved the checkpoint or Play itself: draw the scrubber's widgets under new keys.

    The browser sends every widget's value with every request, including Play's timer ticks,
    which fire on their own schedule. One sent before the browser drew the moved slider
    carries the old value, which Streamlit reports as a change (on_change): taken as the
    user's move, Play stepped back or never ended. ``keep`` ignores values of a widget key
    that is no longer drawn.
    """
    st.session_state["_scrub_gen"] = st.session_state.get("_scrub_gen", 0) + 1


def keep(name: str, key: str | None = None) -> bool:
    """on_change callback: copy the widget's value into its persisted key; False if ignored.

    ``key``: the key of the widget that changed (default ``wkey(name)``): a value of a former
    generation of the scrubber's widgets is one the browser sent before drawing the current
    one (see ``moved``), not the user's.
    """
    if key is not None and key != wkey(name):
        return False
    st.session_state[pkey(name)] = st.session_state.get(key or wkey(name))
    return True


def seed(name: str, value: Any) -> None:
    """Set the widget's value (before it is created in this run) and its persisted copy."""
    st.session_state[pkey(name)] = value
    st.session_state[wkey(name)] = value


def kept(name: str, default: Any, options: Sequence[Any] | None = None,
         valid: Callable[[Any], bool] | None = None, url: str | None = None) -> dict[str, Any]:
    """Widget kwargs that keep a page setting across page switches: ``st.radio(..., **kept("x", "a"))``.

    The persisted value is seeded into the widget (falling back to ``default`` when it is not
    among ``options``); pass no ``value``/``index`` to the widget. ``url``: the query parameter
    that carries the setting in a shared link (one of ``SETTING_KEYS``), read on first load.
    """
    v = st.session_state.get(pkey(name), default)
    wanted = pending(url) if url is not None else None
    if wanted is not None:
        match = [o for o in options if str(o) == wanted] if options is not None else [wanted]
        if match and (valid is None or valid(match[0])):
            v = match[0]
        else:
            st.warning(f"The link's {url}={wanted!r} is not a choice here; showing {default!r}.")
    if (options is not None and v not in options) or (valid is not None and not valid(v)):
        v = default
    seed(name, v)
    if url is not None:
        set_query(url, v)
    return {"key": wkey(name), "on_change": keep, "args": (name,)}


def kept_list(name: str, options: Sequence[str], url: str) -> dict[str, Any]:
    """``kept`` for a multiselect of names: the choice is kept across pages and carried in the link as
    ``url=a,b`` (names that are not among ``options`` are dropped, with a warning)."""
    v = st.session_state.get(pkey(name), [])
    wanted = pending(url)
    if wanted is not None:
        names = [n for n in wanted.split(",") if n]
        v = [n for n in names if n in options]
        if len(v) < len(names):
            st.warning(f"The link's {url} names {', '.join(n for n in names if n not in options)}, "
                       "not among the choices here; left out.")
    v = [n for n in v if n in options]
    seed(name, v)
    if v:
        set_query(url, ",".join(v))
    elif url in st.query_params:
        del st.query_params[url]
    return {"key": wkey(name), "on_change": keep, "args": (name,)}


def set_query(key: str, value: Any) -> None:
    """Write a query parameter (only when it changes: a URL change makes the browser work)."""
    v = str(value)
    if st.query_params.get(key) != v:
        st.query_params[key] = v


def pending(key: str) -> str | None:
    """A query parameter read on first load and not yet applied (applied once, then dropped)."""
    return st.session_state.pop(f"_qp_{key}", None)


def read_query_params() -> None:
    """On a session's first run, remember run/ckpt/layer/page from the URL for the controls to apply."""
    if st.session_state.get("_qp_read"):
        return
    st.session_state["_qp_read"] = True
    for k in (*QUERY_KEYS, *SETTING_KEYS):
        v = st.query_params.get(k)
        if v not in (None, ""):
            st.session_state[f"_qp_{k}"] = v


def current_run() -> str | None:
    """The run chosen in the sidebar (kept across pages), or None before any."""
    return st.session_state.get(pkey("run"))


def keep_run_param() -> None:
    """On pages without the run picker (Train, Compare), keep the chosen run in the URL."""
    run = current_run() or pending("run")
    if run:
        st.session_state.setdefault(pkey("run"), run)
        set_query("run", run)
