"""SE gates page: gate distributions per squeeze-and-excitation block and how they evolve."""
from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from core.render import charts as C
from ui import cache, state, trajectory, widgets

st.title("Squeeze-and-excitation gates")
sel = state.sidebar("gates")
if sel is None or not sel.ckpts:
    st.stop()
eng = state.engine(sel.run)
if eng is None:
    st.stop()
if not eng.se_blocks:
    st.info("This model has no squeeze-and-excitation (SE) blocks: no gate multiplies a feature map by a "
            "per-channel factor computed from its global pooling. Nothing to show here.")
    st.stop()
res = widgets.probe_set_statistics(sel, "gates")

hist, _ = cache.history(sel.path, cache.dir_stamp(sel.run.path))
mie = sel.run.manifest.mini_epoch_images
blocks = [b.name for b in eng.se_blocks]
me = sel.ckpt.mini_epoch if sel.ckpt is not None else sel.mini_epochs[-1]
x = state.x_axis()
base = (sel.path, sel.stamp, cache.dir_stamp(sel.run.path), x)
st.caption(f"{len(blocks)} SE blocks found by structure: " + ", ".join(blocks) + ". Histograms pool every "
           "probe image and channel.")


def _gh(kind: str) -> pd.DataFrame:
    gh = res.gate_hist
    return gh[gh["kind"].astype(str) == kind].assign(block=lambda d: d["block"].astype(str))


def small_multiples(kind: str, at: int | None, xtitle: str):
    """One histogram (``at`` a mini-epoch) or one bins x checkpoints map (``at`` None) per SE block."""
    gh = _gh(kind)
    if at is not None:
        gh = gh[gh["mini_epoch"] == at]
    charts = []
    for b in blocks:
        d = gh[gh["block"] == b]
        if at is not None:
            charts.append(C.gate_histogram(d, title=b, width=230, height=140, xtitle=xtitle))
        else:
            charts.append(C.hist_evolution(C.with_x(d, x, hist, mie), x=x, title=b, width=230, height=140,
                                           ytitle=xtitle))
    return alt.concat(*charts, columns=3), gh


st.subheader(f"Gate values at mini-epoch {me}")
widgets.chart("gates_hist", (*base, me), lambda: small_multiples("gate", me, "gate value"))

st.subheader("Gate distribution over training")
st.caption("Each column is one checkpoint's gate histogram (darker = more gates in that bin).")
widgets.chart("gates_evol", base, lambda: small_multiples("gate", None, "gate value"))

st.subheader("Saturated and undecided gates")


def fractions():
    fr = C.with_x(res.gates, x, hist, mie)
    return C.gate_fractions(fr, x=x), fr


widgets.chart("gates_frac", base, fractions)

st.subheader(f"Gate logits (before the sigmoid) at mini-epoch {me}")
if (res.gate_hist["kind"].astype(str) == "logits").any():
    st.caption("End bins collect everything beyond ±12.")
    widgets.chart("gates_logits", (*base, me), lambda: small_multiples("logits", me, "logit"))
else:
    st.caption("The logits of these gates are not available.")

st.subheader("Squeeze path: hidden activations")
st.caption("Mean |activation| of each block's squeeze-path hidden layer. Near 0 means a dead squeeze path: "
           "the gates then sit at sigmoid(bias), e.g. 0.5.")


def hidden():
    hid = res.layers[res.layers["kind"].astype(str) == "se_hidden"]
    hid = C.mean_over_probes(hid, ["layer", "mini_epoch"], ["mean_abs", "frac_dead_channels"])
    hid = C.with_x(hid, x, hist, mie)
    return C.lines_by(hid, "mean_abs", "layer", x=x, log=True, ytitle="mean |hidden|", height=200), hid


widgets.chart("gates_hidden", base, hidden)

st.subheader("Per-channel gates over training")
b = st.selectbox("SE block", blocks, **state.kept("gates_block", blocks[0], blocks, url="block"))
st.caption("Mean over the probe set of each channel's gate; hover a line to see its channel.")


def channels():
    gc = res.gate_channels
    gc = C.with_x(gc[gc["block"].astype(str) == b], x, hist, mie)
    table = gc.groupby(["channel", "mini_epoch"], observed=True)[["gate", "logit"]].mean().reset_index()
    return C.gate_channel_lines(gc, x=x, title=f"{b}: one line per channel"), table


widgets.chart("gates_channels", (*base, b), channels)

st.subheader("Product of gates along the trunk")
st.caption("Cumulative product of each block's mean gate in depth order: how much the SE gates together scale "
           "the signal by the time it has passed block k. A product far below 1 attenuates the deep layers.")


def product():
    prod = C.with_x(C.gate_product(res.gates, blocks), x, hist, mie)
    prod["through"] = prod["position"].astype(str) + ": " + prod["block"]
    order = list(dict.fromkeys(prod.sort_values("position")["through"]))
    return C.lines_by(prod, "product", "through", x=x, log=True, ytitle="product of mean gates", sort=order), prod


widgets.chart("gates_product", base, product)

trajectory.se_scale_view(sel, eng, res, hist, x)
