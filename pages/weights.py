"""Weights page: weight norms, distance from initialisation, update ratios, BatchNorm and gradient norms."""
from __future__ import annotations

import streamlit as st

from core.render import charts as C
from ui import cache, state, widgets

st.title("Weights and updates")
sel = state.sidebar("weights", image=False)
if sel is None or not sel.ckpts:
    st.stop()
eng = state.engine(sel.run)
if eng is None:
    st.stop()
res = widgets.probe_set_statistics(sel, "weights")

hist, _ = cache.history(sel.path, cache.dir_stamp(sel.run.path))
m = sel.run.manifest
mie = m.mini_epoch_images

c1, c2, c3 = st.columns([1.2, 1, 1.5])
with c1:
    x = state.x_axis()
log = c2.toggle("Log y", **state.kept("w_log", True))
w = res.weights
variables = sorted(w["variable"].astype(str).unique()) if len(w) else ["kernel"]
var = c3.selectbox("Variable", variables, **state.kept("w_var", "kernel" if "kernel" in variables else variables[0],
                                                        variables, url="wvar"))
if int(res.extras["n_nan_weights"].sum() if len(res.extras) else 0):
    bad = res.extras[res.extras["n_nan_weights"] > 0]["mini_epoch"].tolist()
    st.error(f"NaN weights from mini-epoch {bad[0]} on ({len(bad)} checkpoints).")

depth = eng.weight_layer_order()  # architecture order: the colour order of many-layer charts
var_layers = set(C.weights_by_layer(w, var)["layer"]) if len(w) else set()
f1, f2 = st.columns([4, 1])
top = int(f2.number_input("Top N layers", 1, 500, **state.kept("w_top", C.MAX_LEGEND, range(1, 501), url="wtop"),
                          help="With no layer chosen: the N layers with the largest value at the last checkpoint. "
                               f"Up to {C.MAX_LEGEND} lines get a legend."))
layer_options = [l for l in depth if l in var_layers] or sorted(var_layers)
chosen = f1.multiselect("Layers", layer_options, **state.kept_list(f"w_layers:{var}", layer_options, url="wlayers"),
                        placeholder=f"the top {top} of {len(var_layers)} layers")
base = (sel.path, sel.stamp, cache.dir_stamp(sel.run.path), x, log, tuple(chosen), top)


def shown(d, metric: str):
    """The chosen layers, else the top N of ``metric``."""
    if not len(d):
        return d
    return d[d["layer"].isin(chosen)] if chosen else C.top_series(d, "layer", metric, top)

bs = int(m.training.get("batch_size") or 0)
steps = mie // bs if bs and mie else 0


def weight_chart(metric: str, per_step: bool = False):
    d = C.with_x(C.weights_by_layer(w, var), x, hist, mie)
    if per_step and steps and len(d):
        d = d.assign(update_ratio=d["update_ratio"] / steps)
    cols = ["layer", "mini_epoch", metric] + (["images_seen"] if x == "images_seen" else [])
    d = shown(d[cols], metric) if len(d) else d
    return C.lines_by(d, metric, "layer", x=x, log=log, ytitle=C.WEIGHT_METRICS[metric], height=260, sort=depth), d


st.caption(f"Charts with more than {C.MAX_LEGEND} layers colour them by depth (light = near the input, "
           "dark = deep); hover a line to see its layer. Choose layers or the top N above for a legend.")
st.subheader("Weight norm")
widgets.chart("w_norm", (*base, var), lambda: weight_chart("norm"))
st.subheader("Distance from initialisation")
widgets.chart("w_dist", (*base, var), lambda: weight_chart("dist_from_init"))
st.subheader("Update ratio between checkpoints")
per_step = st.toggle(f"Per optimizer step (÷ {steps} steps per mini-epoch)", disabled=not steps,
                     **state.kept("w_per_step", False))
st.caption("‖W(t) − W(t−1)‖ / ‖W(t−1)‖ between consecutive checkpoints. A healthy per-step ratio is around 1e-3; "
           "the per-step value divides by the steps between checkpoints (a lower bound, since steps partly cancel).")
widgets.chart("w_update", (*base, var, per_step), lambda: weight_chart("update_ratio", per_step))

st.subheader("Gradient norms (labelled probe set)")


def grads():
    g = res.grads
    g = shown(C.with_x(g.assign(layer=g["layer"].astype(str)) if len(g) else g, x, hist, mie), "grad_norm")
    return C.lines_by(g, "grad_norm", "layer", x=x, log=log, ytitle="‖∂loss/∂W‖", height=260, sort=depth), g


widgets.chart("w_grads", base, grads)

st.subheader("BatchNorm")
if res.batchnorm.empty:
    st.info("This model has no BatchNorm layers.")
else:
    def bn_chart(table: str, col: str, title: str, lg: bool, legend: bool):
        d = getattr(res, table)
        d = C.with_x(d.assign(layer=d["layer"].astype(str)), x, hist, mie)
        d = d[["layer", "mini_epoch", col] + (["images_seen"] if x == "images_seen" else [])]
        d = shown(d, col)
        return C.lines_by(d, col, "layer", x=x, log=lg, ytitle=title, width=420, height=200, legend=legend,
                          sort=depth, legend_orient="bottom"), d

    specs = [("batchnorm", "gamma_mean", "mean γ", False), ("batchnorm", "frac_gamma_near_zero", "fraction |γ| < 1e-3", False),
             ("batchnorm", "moving_variance_mean", "mean moving variance", log),
             ("batchnorm", "moving_mean_abs_mean", "mean |moving mean|", log)]
    if len(res.bn_batch):
        specs += [("bn_batch", "mean_shift", "batch mean shift (moving-std units)", log),
                  ("bn_batch", "var_ratio", "batch / moving variance", log)]
    b1, b2 = st.columns(2)
    for i, (table, col, title, lg) in enumerate(specs):
        with (b1 if i % 2 == 0 else b2):
            widgets.chart(f"w_bn_{col}", (*base, col),
                          lambda table=table, col=col, title=title, lg=lg, i=i: bn_chart(table, col, title, lg, i % 2 == 1))
    if len(res.bn_batch):
        st.caption("The last two: probe-batch statistics against the moving statistics (the train/inference gap). "
                   "Far from 0 and 1 = BatchNorm behaves differently at inference than in training.")
