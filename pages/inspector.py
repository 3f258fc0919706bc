"""Channel inspector page: probe images that drive a channel, first-layer filters, probes the model gets wrong."""
from __future__ import annotations

import numpy as np
import streamlit as st

from core.analysis import inspector as I
from core.render import inspector_views as IV
from core.run.runs import RunError
from ui import cache, state, widgets
from ui import cache_compare as cc

SCALES = {"filter": "each filter, each checkpoint", "over_time": "each filter, over all checkpoints shown"}
MAX_COLUMNS = 12  # checkpoints shown in the filter evolution (evenly spaced when there are more)

st.title("Channel inspector")
sel = state.sidebar("inspector", image=False)
if sel is None or sel.ckpt is None:
    st.stop()
me = sel.ckpt.mini_epoch
try:
    result = cache.swept(sel.run, sel.stamp, sel.trust, label="Statistics of the probe set")
    x_img, y_lab = cache.probe_set(sel.path, cache.probes_mtime(sel.run))
except (RunError, ValueError, OSError) as e:
    st.error(f"The probe-set statistics are not available: {e}")
    st.stop()
classes = sel.run.manifest.class_names
channels = result.channels
if channels.empty:
    st.warning("The sweep has no channel statistics for this run.")
    st.stop()
counts = channels[(channels["mini_epoch"] == channels["mini_epoch"].min()) & (channels["probe"] == 0)]
counts = (counts.groupby(counts["layer"].astype(str), observed=True)["channel"].max() + 1).to_dict()
layers = [l for l in result.layer_order if l in counts]


def label(i: int) -> str:
    lab = int(y_lab[i]) if i < len(y_lab) else -1
    return f"#{i} · " + (classes[lab] if 0 <= lab < len(classes) else (str(lab) if lab >= 0 else "?"))


# ---- top probes of one channel ----
st.subheader("Probe images that activate a channel most")
c1, c2, c3, c4 = st.columns([2.2, 1, 1.2, 1.2])
layer = state.select_layer(layers, where=c1, format_func=lambda n: f"{n}  ·  {counts[n]} channels")
n_ch = counts[layer]
channel = int(c2.number_input(f"Channel (0–{n_ch - 1})", 0, n_ch - 1, **state.kept("insp_channel", 0, range(n_ch))))
by = c3.selectbox("Rank by", list(I.RANK_BY), format_func=I.RANK_BY.get, **state.kept("insp_by", "mean", I.RANK_BY))
n_probes = len(result.probe_ids)
k = int(c4.number_input("Top k", 1, max(1, n_probes), **state.kept("insp_k", min(8, n_probes),
                                                                      range(1, n_probes + 1))))
ranking = I.channel_ranking(channels, layer, channel, me, by)
top = ranking.head(k)
if top.empty:
    st.info(f"No statistics for {layer} #{channel} at mini-epoch {me}.")
else:
    tiles = IV.probe_tiles(x_img[top["probe"].to_numpy()]) if len(x_img) else []
    if len(tiles):
        st.image([t for t in tiles], caption=[f"{r}. {label(int(p))} · {v:.3g}" for r, p, v in
                                              zip(top["rank"], top["probe"], top["value"])],
                 width=96, output_format="PNG")
    traj = I.rank_trajectories(channels, layer, channel, by)
    labels = {i: label(i) for i in range(n_probes)}
    chart = IV.rank_chart(traj, top["probe"].tolist(), labels, current=me)
    widgets.chart_with_export(cc.unsquash(chart), traj, "insp_ranks")
    stab = I.rank_stability(traj, k, me)
    if len(stab) > 1:
        first, last = stab.iloc[0], stab.iloc[-1]
        st.caption(f"Of the top {k} at mini-epoch {me}: {int(first['overlap'])} were in the top {k} at mini-epoch "
                   f"{int(first['mini_epoch'])}, {int(last['overlap'])} at mini-epoch {int(last['mini_epoch'])}. "
                   f"Ranked by the channel's {I.RANK_BY[by]} on each probe image (the run's probe set).")

# ---- first-layer filters ----
st.subheader("First-layer filters")
name, kernels = cc.first_layer_kernels(sel.path, sel.stamp, tuple(result.layer_order))
if name is None or not kernels:
    st.info("No first-layer convolution reading the image (kernel with 1 or 3 input channels) was found.")
else:
    by_me = dict(kernels)
    first_layer = name.rsplit("/", 1)[0]
    picked = channel if first_layer == layer and channel < by_me[kernels[-1][0]].shape[-1] else None
    kern = by_me.get(me)
    f1, f2 = st.columns([1.2, 1])
    with f1:
        if kern is None:
            st.info(f"No {name} at mini-epoch {me}.")
        else:
            widgets.png(IV.filter_grid(kern, selected=picked), caption=f"{name} {tuple(kern.shape)} at mini-epoch "
                        f"{me}: each filter min–max normalised")
    with f2:
        n_out = kernels[-1][1].shape[-1]
        default = [picked] if picked is not None else list(range(min(6, n_out)))
        filters = st.multiselect("Filters over checkpoints", list(range(n_out)), default=default,
                                 key=f"insp_filters_{picked}", max_selections=16,
                                 help="Follows the inspected channel when the layer is the first convolution.")
        scale = st.radio("Normalise", list(SCALES), format_func=SCALES.get, horizontal=True,
                         **state.kept("insp_scale", "filter", SCALES))
    if filters:
        shown = kernels
        if len(kernels) > MAX_COLUMNS:
            idx = np.unique(np.linspace(0, len(kernels) - 1, MAX_COLUMNS).round().astype(int))
            shown = [kernels[i] for i in idx]
        widgets.png(IV.filter_evolution(shown, filters, scale=scale),
                    caption="rows: filters; columns: mini-epochs" + (" (evenly spaced)" if shown is not kernels
                                                                      else ""))

# ---- most wrong probes ----
st.subheader(f"Probe images the model gets most wrong at mini-epoch {me}")
if not len(x_img) or not (y_lab >= 0).any():
    st.info("This run has no labelled probe set.")
else:
    try:
        probs = cc.predictions(sel.path, cache.arch_mtime(sel.run), cache.ckpt_key(sel.ckpt),
                               cache.probes_mtime(sel.run), sel.trust)
    except Exception as e:  # a model without an output tap, a damaged checkpoint...
        st.warning(f"Predictions are not available: {type(e).__name__}: {e}")
    else:
        table = I.prediction_table(probs, y_lab, classes)
        worst = I.most_wrong(table, k)
        acc = I.accuracy_of(table)
        st.caption(f"Probe-set accuracy at mini-epoch {me}: {acc:.0%} ({int(table['correct'].sum())} of "
                   f"{int((table['label'] >= 0).sum())}); loss = −log p(true class).")
        st.image([t for t in IV.probe_tiles(x_img[worst["probe"].to_numpy()])],
                 caption=[f"#{p} {t} → {pr} · p(true) {pt:.2f}" for p, t, pr, pt in
                          zip(worst["probe"], worst["label_name"], worst["pred_name"], worst["p_true"])],
                 width=96, output_format="PNG")
        st.dataframe(table.sort_values("loss", ascending=False), hide_index=True, width="stretch",
                     column_config={"p_true": st.column_config.NumberColumn(format="%.3f"),
                                    "p_pred": st.column_config.NumberColumn(format="%.3f"),
                                    "loss": st.column_config.NumberColumn(format="%.3f")})
