"""Streamlit cache wrappers of the Compare and Inspector pages (plain keys; results passed unhashed)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from core.run.runs import Run
from ui import cache


def unsquash(chart: Any) -> Any:
    """A single-view chart wrapped in a one-panel vconcat, so Streamlit keeps its height.

    With the Streamlit theme a single view is autosized to fit its ``height`` *including*
    title, legend and axes (a 220 px line chart keeps ~70 px of plot); concatenations are not.
    """
    import altair as alt

    return alt.vconcat(chart) if isinstance(chart, (alt.Chart, alt.LayerChart)) else chart


@st.cache_data(show_spinner=False, max_entries=16)
def layer_match(key: tuple, _results: Sequence[Any]):
    """``core.analysis.compare.shared_layers`` of the results identified by ``key`` (run paths + checkpoint stamps)."""
    from core.analysis.compare import shared_layers

    return shared_layers(_results)


@st.cache_data(show_spinner="Finding where the runs differ…", max_entries=16)
def differences(key: tuple, align: str, top: int, _results: Sequence[Any], _histories: Mapping[str, pd.DataFrame],
                _sizes: Mapping[str, int]) -> pd.DataFrame:
    """``core.analysis.compare.biggest_differences``; ``key`` identifies results, histories and sizes."""
    from core.analysis.compare import biggest_differences

    return biggest_differences(_results, top=top, histories=_histories, sizes=_sizes, align=align)


@st.cache_data(show_spinner=False, max_entries=16)
def dead_fractions(key: tuple, layer: str, _results: Sequence[Any]) -> pd.DataFrame:
    from core.analysis.compare import dead_fractions as dead

    return dead(_results, [layer])


@st.cache_data(show_spinner="Predicting the probe set…", max_entries=32)
def predictions(run_path: str, arch: int, ckpt: tuple, probes_mtime: int, trust: bool = False) -> np.ndarray:
    """Probabilities (N, K) of the run's probe set at one checkpoint (``ckpt`` = ``cache.ckpt_key``)."""
    from core.analysis.inspector import predict_probes

    eng = cache.engine(run_path, arch, trust)
    x, _ = cache.probe_set(run_path, probes_mtime)
    return predict_probes(eng, cache.checkpoint_of(ckpt), x)


@st.cache_data(show_spinner="Reading the first-layer filters…", max_entries=16)
def first_layer_kernels(run_path: str, stamp: tuple, layer_order: tuple[str, ...]
                        ) -> tuple[str | None, list[tuple[int, np.ndarray]]]:
    """(variable path, [(mini_epoch, kernel)]) of the first conv kernel reading the image, at every checkpoint."""
    from core.analysis.inspector import first_conv_kernel, read_kernel

    run = Run(run_path)
    ckpts = run.checkpoints()
    if not ckpts:
        return None, []
    try:
        w = run.read_weights(ckpts[0])
    except Exception:  # foreign checkpoints need the model; the page says there is nothing to show
        return None, []
    found = first_conv_kernel(w, layer_order)
    if found is None:
        return None, []
    return found[0], read_kernel(run, ckpts, found[0])
