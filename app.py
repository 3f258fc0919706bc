"""Activation Dynamics Explorer: `streamlit run app.py [-- --runs-root PATH]`."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import streamlit as st

st.set_page_config(page_title="Activation Dynamics Explorer", page_icon="🔬", layout="wide")

PAGES = [
    st.Page("pages/overview.py", title="Overview", icon="🏠", url_path="overview", default=True),
]

st.navigation(PAGES).run()
