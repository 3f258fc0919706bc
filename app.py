"""Activation Dynamics Explorer: `streamlit run app.py [-- --runs-root PATH]`.

The app's script is explorer.py; this file is its server (``st.App``), which starts importing
TensorFlow (seconds: bench/bench_internals.py) as soon as the server is up, while the browser is
still loading the page, so the first channel grid comes sooner. ``streamlit run explorer.py``
works too, without that head start.
"""
from __future__ import annotations

import os
import threading
from contextlib import asynccontextmanager

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import streamlit as st  # noqa: E402


def _import_tensorflow() -> None:
    try:
        import keras  # noqa: F401  (imports TensorFlow)
    except Exception:  # the first page that needs it imports it again and shows the error
        pass


@asynccontextmanager
async def _head_start(_app):
    # what the script imports first is imported here, before the thread starts, so the
    # thread and the first script run never import the same modules at the same time
    import core.engine.engine  # noqa: F401
    import core.render.grids  # noqa: F401
    import ui.state  # noqa: F401
    import ui.widgets  # noqa: F401

    threading.Thread(target=_import_tensorflow, name="ade-import-tensorflow", daemon=True).start()
    yield


app = st.App("explorer.py", lifespan=_head_start)
