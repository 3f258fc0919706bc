"""Overview page: manifest, training config, architecture with SE blocks, training curves."""
from __future__ import annotations

import json

import streamlit as st

from core.charts import training_curves
from ui import cache, state

st.title("Overview")
run = state.select_run()
if run is None:
    st.stop()

m = run.manifest
hist, problems = cache.history(str(run.path), cache.dir_stamp(run.path))
ckpts = run.checkpoints()
for p in problems + run.problems:
    st.warning(p)

c1, c2, c3, c4 = st.columns(4)
c1.metric("Checkpoints", len(ckpts))
c2.metric("Mini-epoch size", f"{m.mini_epoch_images:,} img")
c3.metric("Input", f"{m.input_height}×{m.input_width}×{m.input_channels}")
c4.metric("Classes", len(m.class_names) or "?")

st.subheader("Training curves")
x = st.radio("x axis", ["mini_epoch", "images_seen"], horizontal=True,
             format_func=lambda v: v.replace("_", " "), key="overview_x")
st.altair_chart(training_curves(hist, x=x), use_container_width=False)

with st.expander("Training configuration", expanded=False):
    st.json(m.training)
with st.expander("Data set and manifest", expanded=False):
    st.json({k: v for k, v in m.raw.items() if k not in ("training", "class_names")})

st.subheader("Architecture")
try:
    table = cache.architecture_table(str(run.path), cache._mtime(run.architecture_path))
    st.dataframe(table, hide_index=True, use_container_width=True)
except Exception as e:  # the page must stay usable without the model
    st.error(f"The architecture could not be loaded: {e}")
