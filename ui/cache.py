"""All Streamlit caching lives here; cached functions take plain keys (paths, mtimes, names)."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import streamlit as st

from core.runs import MANIFEST, HISTORY, Run, RunInfo, list_runs, open_run


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:
        return 0


def dir_stamp(path: Path) -> tuple[int, int]:
    """A cheap key that changes when files are added to or replaced in a run."""
    ck = path / "checkpoints"
    return (_mtime(path / MANIFEST), _mtime(path / HISTORY) + _mtime(ck))


@st.cache_data(ttl=5, show_spinner=False)
def runs_list(root: str) -> list[RunInfo]:
    return list_runs(root)


def run(root: str, name: str) -> Run:
    """Open a run by name (path-traversal safe); cheap, so not cached."""
    return open_run(root, name)


@st.cache_data(show_spinner=False, max_entries=64)
def history(run_path: str, stamp: tuple[int, int]) -> tuple[pd.DataFrame, list[str]]:
    r = Run(run_path)
    df = r.history()
    return df, list(r.problems)


@st.cache_resource(show_spinner="Loading the architecture…", max_entries=8)
def model(run_path: str, arch_mtime: int, trust: bool = False):
    """The run's Keras model (weights of mini-epoch 0); shared across sessions, never mutated."""
    return Run(run_path).load_model(trust=trust)


@st.cache_data(show_spinner=False, max_entries=16)
def architecture_table(run_path: str, arch_mtime: int, trust: bool = False) -> pd.DataFrame:
    from core.architecture import architecture_table as table

    return table(model(run_path, arch_mtime, trust))
