"""One layer across checkpoints, drawn: the filmstrip (one row of tiles on one fixed colour scale, so shrinking
shows as fading), percentile bands over training, and the SE blocks' excitation scale."""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from core.render import charts as CH
from core.render import grids as G


def filmstrip_image(maps: np.ndarray, lo: float, hi: float, labels: list[str] | None = None, *,
                    cmap: str = "viridis", tile: int = 72, gap: int = 4, font: int = 11) -> np.ndarray:
    """uint8 RGB (H, W, 3) of maps (T, h, w) side by side, every tile coloured on the same ``[lo, hi]``.

    ``labels`` (one per tile, e.g. "me 3") are written under the tiles. A constant map (a dead channel)
    is one flat colour: the lowest of the scale when it sits at ``lo``.
    """
    maps = np.asarray(maps, np.float32)
    t, h, w = maps.shape
    k = G.upscale_factor(h, w, tile)
    x01 = G.normalise(maps, np.full(t, lo), np.full(t, hi))
    tiles = G.upscale(G.apply_colormap(x01, G.colormap(cmap)), k)  # (T, h*k, w*k, 3)
    th, tw = tiles.shape[1:3]
    label_h = font + 6 if labels else 0
    img = np.full((th + label_h, t * tw + max(t - 1, 0) * gap, 3), 255, np.uint8)
    for i in range(t):
        x = i * (tw + gap)
        img[:th, x:x + tw] = tiles[i]
        if labels:
            G.draw_text(img, th + 3, x + 2, labels[i], font, (40, 40, 40))
    return img


# ---- distributions over checkpoints (percentile bands) -------------------------------------------------

_BANDS = (("p0", "p100", 0.15), ("p7", "p93", 0.25), ("p16", "p84", 0.4))  # TensorBoard's shading, outside in


def distribution_chart(df: pd.DataFrame, history: pd.DataFrame | None = None, x: str = "mini_epoch",
                       loss_on_chart: bool = False, width: int = 560, height: int = 150) -> alt.Chart:
    """Percentile bands (0-100, 7-93, 16-84 %, median line) of a layer over checkpoints, one panel per image.

    ``df``: image, mini_epoch (and ``x`` when it is images_seen), p0 ... p100. With ``history`` the training
    loss is drawn on the same x axis: in a panel below, or (``loss_on_chart``) on a right axis of every panel.
    """
    if df is None or df.empty:
        return CH.placeholder("No activations to show.", width=width)
    title = "images seen" if x == "images_seen" else "mini-epoch"
    ex = alt.X(f"{x}:Q", title=title, axis=alt.Axis(format="~s") if x == "images_seen" else alt.Axis(tickMinStep=1))
    loss = None
    if history is not None and len(history) and "loss" in history and x in history:
        loss = history[[x, "loss"]].dropna()
    panels = []
    for img in dict.fromkeys(df["image"]):
        d = df[df["image"] == img]
        base = alt.Chart(d).encode(x=ex)
        layers = [base.mark_area(opacity=op, color="#e8590c").encode(
            y=alt.Y(f"{lo}:Q", title="activation"), y2=f"{hi}:Q") for lo, hi, op in _BANDS]
        layers.append(base.mark_line(color="#7f2704", point=alt.OverlayMarkDef(size=14)).encode(
            y="p50:Q", tooltip=[alt.Tooltip("mini_epoch:Q", title="mini-epoch"),
                                *[alt.Tooltip(f"{c}:Q", format=".3g") for c in
                                  ("p0", "p7", "p16", "p50", "p84", "p93", "p100")]]))
        panel = alt.layer(*layers)
        if loss_on_chart and loss is not None and len(loss):
            ln = alt.Chart(loss).mark_line(color="#1f77b4", strokeDash=[4, 2]).encode(
                x=ex, y=alt.Y("loss:Q", title="training loss", axis=alt.Axis(titleColor="#1f77b4")))
            panel = alt.layer(panel, ln).resolve_scale(y="independent")
        panels.append(panel.properties(width=width, height=height, title=str(img)))
    out = alt.vconcat(*panels)
    if loss is not None and len(loss) and not loss_on_chart:
        out = alt.vconcat(out, alt.Chart(loss).mark_line(point=True, color="#1f77b4").encode(
            x=ex, y=alt.Y("loss:Q", title="training loss", scale=alt.Scale(zero=False))).properties(
            width=width, height=90))
    return out


# ---- SE excitation scale ----------------------------------------------------------------------------------

_SE_MEASURES = {"input_mean_abs": "block input mean |a|", "gate_mean": "mean gate",
                "output_mean_abs": "excited output mean |a|", "input_max": "block input max",
                "output_max": "excited output max"}


def se_scale_chart(df: pd.DataFrame, x: str = "mini_epoch", width: int = 260, height: int = 150) -> alt.Chart:
    """Per SE block over checkpoints: input, gate and excited-output scale (log y), and the top-k share."""
    if df is None or df.empty:
        return CH.placeholder("No SE blocks.", width=width * 2)
    keys = ["block", x] if x != "mini_epoch" else ["block", "mini_epoch"]
    long = df[keys + list(_SE_MEASURES)].melt(id_vars=keys, var_name="measure", value_name="value")
    long["measure"] = long["measure"].map(_SE_MEASURES)
    long = long[np.isfinite(long["value"].astype(float)) & (long["value"] > 0)]
    ex = alt.X(f"{x}:Q", title="images seen" if x == "images_seen" else "mini-epoch")
    blocks = list(dict.fromkeys(df["block"]))
    scale = alt.Chart(long).mark_line(point=alt.OverlayMarkDef(size=12)).encode(
        x=ex, y=alt.Y("value:Q", scale=alt.Scale(type="log"), title="scale"),
        color=alt.Color("measure:N", title=None, legend=alt.Legend(orient="top")),
        tooltip=["block:N", "measure:N", alt.Tooltip("mini_epoch:Q", title="mini-epoch"),
                 alt.Tooltip("value:Q", format=".3g")],
    ).properties(width=width, height=height).facet(facet=alt.Facet("block:N", title=None, sort=blocks), columns=3)
    k = int(df["k"].iloc[0])
    share = alt.Chart(df).mark_line(point=True, color="#555").encode(
        x=ex, y=alt.Y("topk_share:Q", title=f"share of output in top {k} channels", axis=alt.Axis(format="%"),
                      scale=alt.Scale(domain=[0, 1])),
        tooltip=["block:N", alt.Tooltip("mini_epoch:Q", title="mini-epoch"), alt.Tooltip("topk_share:Q", format=".1%")],
    ).properties(width=width, height=110).facet(facet=alt.Facet("block:N", title=None, sort=blocks), columns=3)
    return alt.vconcat(scale, share)
