"""Shared sidebar controls kept across pages and mirrored in the URL's query parameters."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st

from core.runs import Run, RunError, runs_root_from_env
from ui import cache


def runs_root() -> Path:
    """``--runs-root`` after ``--`` on the streamlit command line, else ``$ADE_RUNS_ROOT``, else data/runs."""
    argv = sys.argv[1:]
    if "--runs-root" in argv:
        i = argv.index("--runs-root")
        if i + 1 < len(argv):
            return Path(argv[i + 1])
    return runs_root_from_env()


def select_run() -> Run | None:
    """Sidebar run picker; the choice lives in session state and the ``run`` query parameter."""
    root = runs_root()
    infos = cache.runs_list(str(root))
    if not infos:
        st.sidebar.info(f"No runs under `{root}`. Create the demo runs with `make demo`, "
                        "or train one: `python -m core train my-run`.")
        return None
    names = [i.name for i in infos]
    wanted = st.query_params.get("run") or st.session_state.get("run")
    if wanted not in names:
        if wanted:
            st.sidebar.warning(f"Run {wanted!r} is not under the runs root; showing {names[0]!r}.")
        wanted = names[0]
    st.session_state["run"] = wanted
    name = st.sidebar.selectbox("Run", names, key="run",
                                format_func=lambda n: n + ("  ⚠" if next(i for i in infos if i.name == n).error else ""))
    st.query_params["run"] = name
    try:
        return cache.run(str(root), name)
    except RunError as e:
        st.error(f"This run cannot be opened: {e}")
        return None
