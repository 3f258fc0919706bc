"""Page routing: a pending page jump (a link's ``page`` parameter, a finding's button) and the ``page`` parameter."""
from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitAPIException

from ui.pages_registry import BY_NAME
from ui.persist import moved, pending, pkey, set_query


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

    Pages are addressed by their name in ``ui.pages_registry``: ``grid`` is ``pages/grid.py``.
    Call it first in every page.
    """
    _leave_pages_folder_mode()
    target = st.session_state.pop("_goto", None) or pending("page")
    if target and target != page:
        if target in BY_NAME:
            try:
                st.switch_page(BY_NAME[target].path)
            except StreamlitAPIException:  # a page that is not in the navigation
                pass
        st.sidebar.warning(f"Page {target!r} from the link does not exist; showing this page.")
    set_query("page", page)


def goto(page: str, *, layer: str | None = None, ckpt: int | None = None, block: str | None = None) -> None:
    """Button callback target: set the shared layer / checkpoint (and the SE gates page's block), then switch page."""
    if block is not None:
        st.session_state[pkey("gates_block")] = block
    if layer is not None:
        st.session_state[pkey("layer")] = layer
    if ckpt is not None:
        st.session_state[pkey("ckpt")] = ckpt
        moved()
    st.session_state["_goto"] = page
