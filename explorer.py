"""The explorer's script (pages routed with ``st.navigation``); ``streamlit run app.py`` serves it."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import streamlit as st

st.set_page_config(page_title="Activation Dynamics Explorer", page_icon="🔬", layout="wide")

from ui import state  # noqa: E402

HERE = Path(__file__).resolve().parent
# (file, title, icon, url_path); a page whose file is missing (Train, Compare, Inspector are written
# separately) is left out of the navigation.
PAGE_SPECS = [
    ("pages/overview.py", "Overview", ":material/home:", "overview"),
    ("pages/grid.py", "Channel grid", ":material/grid_view:", "grid"),
    ("pages/dynamics.py", "Dynamics", ":material/show_chart:", "dynamics"),
    ("pages/gates.py", "SE gates", ":material/tune:", "gates"),
    ("pages/weights.py", "Weights", ":material/fitness_center:", "weights"),
    ("pages/compare.py", "Compare runs", ":material/compare:", "compare"),
    ("pages/inspector.py", "Inspector", ":material/search:", "inspector"),
    ("pages/train.py", "Train", ":material/model_training:", "train"),
]
PAGES = {url: st.Page(f, title=t, icon=i, url_path=url, default=url == "overview")
         for f, t, i, url in PAGE_SPECS if (HERE / f).exists()}

state.read_query_params()
pg = st.navigation(list(PAGES.values()))
# Pages call ui.state.sidebar(page=...), which applies the ``page`` query parameter of the first load,
# jumps requested by findings, and writes run/ckpt/layer/page back to the URL.
pg.run()
