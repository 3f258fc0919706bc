"""Charts of the Compare page and report: one colour per run, tidy frames from ``core.analysis.compare``."""
from __future__ import annotations

from typing import Sequence

import altair as alt
import numpy as np
import pandas as pd

from core.render.charts import placeholder, x_encoding

WIDTH, HEIGHT = 560, 220


#: Run colours, in the order the runs were picked (distinct hues, unlike a theme's shades of one colour).
RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")


def run_color(runs: Sequence[str]) -> alt.Color:
    runs = list(runs)
    rng = [RUN_COLOURS[i % len(RUN_COLOURS)] for i in range(len(runs))]
    return alt.Color("run:N", title="run", scale=alt.Scale(domain=runs, range=rng), legend=alt.Legend(orient="top", labelLimit=0))  # run names whole


def overlay_chart(df: pd.DataFrame, y: str, runs: Sequence[str], x: str = "mini_epoch", log: bool = False,
                  title: str = "", ytitle: str | None = None, width: int = WIDTH, height: int = HEIGHT,
                  percent: bool = False) -> alt.Chart:
    """One line per run of column ``y`` over checkpoints (df: run, mini_epoch[, images_seen], y)."""
    if df is None or df.empty or y not in df:
        return placeholder(f"No {ytitle or y} to compare.", width=width)
    d = df[np.isfinite(df[y].astype(float))]
    if log:
        d = d[d[y] > 0]
    if x == "images_seen":
        d = d[d["images_seen"].notna()]
    if d.empty:
        return placeholder(f"No finite{' positive' if log else ''} values of {ytitle or y}.", width=width)
    d = d[["run", "mini_epoch", y] + (["images_seen"] if x == "images_seen" else [])]
    yscale = alt.Scale(type="log") if log else (alt.Scale(domain=[0, 1]) if percent else alt.Scale(zero=False))
    return alt.Chart(d).mark_line(point=alt.OverlayMarkDef(size=22)).encode(
        x=x_encoding(x), y=alt.Y(f"{y}:Q", title=ytitle or y, scale=yscale,
                           axis=alt.Axis(format="%") if percent else alt.Axis()),
        color=run_color(runs),
        tooltip=[alt.Tooltip("run:N"), alt.Tooltip("mini_epoch:Q", title="mini-epoch"),
                 *([alt.Tooltip("images_seen:Q", title="images seen", format=",")] if x == "images_seen" else []),
                 alt.Tooltip(f"{y}:Q", format=".4g")],
    ).properties(width=width, height=height, **({"title": title} if title else {}))


def loss_overlay(history: pd.DataFrame, runs: Sequence[str], x: str = "mini_epoch", width: int = WIDTH,
                 height: int = HEIGHT) -> alt.Chart:
    """Training loss (solid) and validation loss (dashed) of every run (history stacked with a run column)."""
    if history is None or history.empty or "loss" not in history:
        return placeholder("No training history to compare.", width=width)
    vals = [c for c in ("loss", "val_loss") if c in history and history[c].notna().any()]
    keep = ["run", "mini_epoch"] + (["images_seen"] if x == "images_seen" and "images_seen" in history else [])
    if x == "images_seen" and "images_seen" not in history:
        return placeholder("The histories have no images_seen column.", width=width)
    long = history[keep + vals].melt(id_vars=keep, value_vars=vals, var_name="series",
                                     value_name="value").dropna(subset=["value"])
    if long.empty:
        return placeholder("No loss recorded.", width=width)
    return alt.Chart(long).mark_line(point=alt.OverlayMarkDef(size=18)).encode(
        x=x_encoding(x), y=alt.Y("value:Q", title="loss", scale=alt.Scale(zero=False)),
        color=run_color(runs),
        strokeDash=alt.StrokeDash("series:N", title=None, legend=alt.Legend(symbolType="stroke"),
                                  scale=alt.Scale(domain=["loss", "val_loss"], range=[[1, 0], [5, 3]])),
        tooltip=[alt.Tooltip("run:N"), alt.Tooltip("series:N"), alt.Tooltip("mini_epoch:Q", title="mini-epoch"),
                 alt.Tooltip("value:Q", format=".4g")],
    ).properties(width=width, height=height, title="training (solid) and validation (dashed) loss")


def gate_saturation_chart(df: pd.DataFrame, runs: Sequence[str], x: str = "mini_epoch", width: int = 260,
                          height: int = 160, columns: int = 3) -> alt.Chart:
    """Per shared SE block: fraction of gates off (< 0.05, solid) and open (> 0.95, dashed), one colour per run."""
    if df is None or df.empty:
        return placeholder("No SE blocks shared by these runs.", width=width * 2)
    keys = ["run", "block", "mini_epoch"] + (["images_seen"] if x == "images_seen" else [])
    long = df[keys + ["frac_low", "frac_high"]].melt(id_vars=keys, var_name="measure", value_name="fraction")
    long["measure"] = long["measure"].map({"frac_low": "off (< 0.05)", "frac_high": "open (> 0.95)"})
    blocks = list(dict.fromkeys(df["block"]))
    return alt.Chart(long).mark_line(point=alt.OverlayMarkDef(size=16)).encode(
        x=x_encoding(x), y=alt.Y("fraction:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"),
                           title="fraction of gates"),
        color=run_color(runs),
        # Both legends above the panels: a right-hand one falls outside a page-wide facet and is cut off.
        strokeDash=alt.StrokeDash("measure:N", title=None, legend=alt.Legend(symbolType="stroke", orient="top",
                                                                             labelLimit=0),
                                  scale=alt.Scale(domain=["off (< 0.05)", "open (> 0.95)"], range=[[1, 0], [5, 3]])),
        tooltip=[alt.Tooltip("run:N"), alt.Tooltip("block:N"), alt.Tooltip("measure:N"),
                 alt.Tooltip("mini_epoch:Q", title="mini-epoch"), alt.Tooltip("fraction:Q", format=".1%")],
    ).properties(width=width, height=height).facet(
        facet=alt.Facet("block:N", title=None, sort=blocks), columns=columns)
