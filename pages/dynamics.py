"""Dynamics page: per-layer and per-channel activation statistics over checkpoints, with the loss."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from core.render import charts as C
from core.run.runs import RunError
from ui import cache, state, trajectory, widgets

st.title("Activation dynamics")
sel = state.sidebar("dynamics")
if sel is None or not sel.ckpts:
    st.stop()
eng = state.engine(sel.run)
if eng is None:
    st.stop()
res = widgets.probe_set_statistics(sel, "dynamics")

hist, _ = cache.history(sel.path, cache.dir_stamp(sel.run.path))
m = sel.run.manifest
x_, y_ = cache.probe_set(sel.path, cache.probes_mtime(sel.run))
probe_labels = {i: state.probe_label(i, y_, m.class_names) for i in range(len(res.probe_ids))}

c1, c2, c3 = st.columns([1.2, 1, 2.5])
with c1:
    x = state.x_axis()
log = c2.toggle("Log scale", **state.kept("dyn_log", False))
default = [sel.image.probe_index] if sel.image is not None and sel.image.probe_index is not None else [0]
chosen = c3.multiselect("Probe images (line style)", list(probe_labels), format_func=probe_labels.get,
                        max_selections=6,
                        **state.kept("dyn_probes", default, valid=lambda v: all(i in probe_labels for i in v)))
extra = sel.image is not None and sel.image.probe_index is None
if extra:
    extra = c3.checkbox(f"Also the sidebar image ({sel.image.label})", **state.kept("dyn_extra", True))

layers = res.layers
kinds = dict(zip(layers["layer"].astype(str), layers["kind"].astype(str)))
order = [t for t in res.layer_order if t in kinds]
layer = state.select_layer(order, format_func=lambda t: f"{t}  ({kinds.get(t, '?')})")


def _rows(table: pd.DataFrame, label_of: dict[int, str], probes: list[int]) -> pd.DataFrame:
    """Rows of ``table`` for ``layer`` and the given probe indices, with an ``image`` label column."""
    t = table[(table["layer"].astype(str) == layer) & table["probe"].isin(probes)].copy()
    t["image"] = t["probe"].map(label_of)
    return t


img_res = None
if extra:
    try:
        img_res = cache.swept(sel.run, sel.stamp, sel.trust, image_key=sel.image.key, image=sel.image.pixels,
                              label=f"{sel.image.label} at every checkpoint")
    except RunError as e:
        st.warning(f"The sidebar image could not be swept: {e}")
mie = m.mini_epoch_images
base = (sel.path, sel.stamp, cache.dir_stamp(sel.run.path), x, log, layer)


def layer_chart():
    parts = [_rows(layers, probe_labels, chosen or [0])]
    if img_res is not None:
        parts.append(_rows(img_res.layers, {0: sel.image.label}, [0]))
    dyn = pd.concat(parts, ignore_index=True)[["image", "mini_epoch", "min", "max", "mean", "std"]]
    dyn = C.with_x(dyn, x, hist, mie)
    return C.activation_dynamics(dyn, x=x, log=log, history=hist), dyn


st.subheader(f"{layer}: range and spread over training")
st.caption("Left axis: min, max and mean of the layer's activations for each image; right axis (orange): "
           "their std. Below: the training loss on the same x axis.")
widgets.chart("dyn_layer", (*base, tuple(chosen), sel.image.key if img_res is not None else None), layer_chart)
trajectory.distributions_view(sel, eng, layer, chosen, probe_labels, hist, x)

st.subheader(f"{layer}: every channel over training")
h1, h2 = st.columns([1, 2])
stat = h1.radio("Statistic", ["std", "mean", "max", "mean_abs"], horizontal=True,
                **state.kept("dyn_stat", "std", ["std", "mean", "max", "mean_abs"]))
img_opts = {f"p{i}": probe_labels[i] for i in (chosen or [0])}
if img_res is not None:
    img_opts["extra"] = sel.image.label
which = h2.selectbox("Image", list(img_opts), format_func=img_opts.get,
                     **state.kept("dyn_which", next(iter(img_opts)), list(img_opts)))


def channel_chart():
    src = img_res.channels if which == "extra" else res.channels
    pid = 0 if which == "extra" else int(which[1:])
    ch = src[(src["layer"].astype(str) == layer) & (src["probe"] == pid)][["channel", "mini_epoch", stat]]
    ch = C.with_x(ch, x, hist, mie)
    return C.channel_heatmap(ch, value=stat, x=x, log=log or stat in ("std", "mean_abs")), ch


widgets.chart("dyn_channels", (*base, stat, which, img_opts[which]), channel_chart)

st.subheader("Where and when activations shrink or grow")
mes = sel.mini_epochs
r1, r2 = st.columns([1, 3])
ref_default = 1 if 1 in mes else mes[0]
ref = r1.selectbox("Reference mini-epoch", mes, **state.kept("dyn_ref", ref_default, mes))
r2.caption("Each layer's activation std (mean over the probe set) divided by its own value at the reference "
           "mini-epoch; red = shrinking, blue = growing, log colour; layers in depth order (input at the top). "
           "**Mini-epoch 0 is a trap for BatchNorm models:** their moving statistics are still the initial ones "
           "(mean 0, variance 1), so inference-mode activations of deep layers look tiny at mini-epoch 0 in every "
           "run. That is why the reference defaults to mini-epoch 1.")


def collapse_chart():
    norm = C.with_x(C.normalised_to_reference(res.layers, "std", ref), x, hist, mie)
    return C.collapse_heatmap(norm, ref, x=x), norm


widgets.chart("dyn_collapse", (*base[:4], ref), collapse_chart)
