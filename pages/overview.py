"""Overview page: manifest, training config, architecture with SE blocks, training curves, findings."""
from __future__ import annotations

import streamlit as st

from core.render.charts import training_curves
from ui import cache, diagnosis, model_options, state, widgets

st.title("Overview")
sel = state.sidebar("overview")
if sel is None:
    st.stop()
run = sel.run
m = run.manifest
hist, problems = cache.history(str(run.path), cache.dir_stamp(run.path))
for p in problems + run.problems:
    st.warning(p)

c1, c2, c3, c4 = st.columns(4)
c1.metric("Checkpoints", len(sel.ckpts))
c2.metric("Mini-epoch size", f"{m.mini_epoch_images:,} img")
c3.metric("Input", f"{m.input_height}×{m.input_width}×{m.input_channels}")
c4.metric("Classes", len(m.class_names) or "?")
model_options.model_notes(run, sel.trust)

findings_slot = st.container()  # filled last: the findings may need the sweep, the rest must not wait

st.subheader("Training curves")
x = state.x_axis()
widgets.chart("overview_curves", (str(run.path), cache.dir_stamp(run.path), x),
              lambda: (training_curves(hist, x=x), hist))

with st.expander("Training configuration", expanded=False):
    st.json(m.training)
with st.expander("Data set and manifest", expanded=False):
    st.json({k: v for k, v in m.raw.items() if k not in ("training", "class_names")})

st.subheader("Architecture")
try:
    table = cache.architecture_table(str(run.path), cache.arch_mtime(run), sel.trust)
    se = sorted({r.split(":")[0] for r in table["SE block"] if r})
    st.caption(f"{len(table)} layers · {int(table['params'].sum()):,} parameters · "
               + (f"{len(se)} SE blocks found by structure: {', '.join(se)}" if se else "no SE blocks found"))
    st.dataframe(table, hide_index=True, width="stretch", height=320)
except Exception as e:  # the page must stay usable without the model
    from core.run.loading import UnsafeModelError

    if isinstance(e, UnsafeModelError):
        state.engine(run)  # shows the trust opt-in
    else:
        st.error(f"The architecture could not be loaded: {e}")

with findings_slot:
    widgets.page_findings(sel, "overview", compute=True)  # all the run's findings
    diagnosis.scale_changes(sel)
