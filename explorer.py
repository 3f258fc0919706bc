"""The explorer's script (pages routed with ``st.navigation``); ``streamlit run app.py`` serves it."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import streamlit as st

st.set_page_config(page_title="Activation Dynamics Explorer", page_icon="🔬", layout="wide")

from ui import pages_registry, state  # noqa: E402
from ui.pages_registry import DEFAULT_PAGE  # noqa: E402

PAGES = {p.name: st.Page(p.path, title=p.title, icon=p.icon, url_path=p.name, default=p.name == DEFAULT_PAGE)
         for p in pages_registry.PAGES}

state.read_query_params()
pg = st.navigation(list(PAGES.values()))
# Pages call ui.state.sidebar(page=...), which applies the ``page`` query parameter of the first load,
# jumps requested by findings, and writes run/ckpt/layer/page back to the URL.
pg.run()
