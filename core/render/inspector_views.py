"""Pictures of the Inspector page: probe ranks over time, first-layer filters as tiles, probe thumbnails."""
from __future__ import annotations

from typing import Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd

from core.analysis.inspector import filter_ranges, filter_rgb
from core.render import grids
from core.render.charts import placeholder, x_encoding


def rank_chart(traj: pd.DataFrame, highlight: Sequence[int], labels: Mapping[int, str] | None = None,
               x: str = "mini_epoch", current: int | None = None, width: int = 560, height: int = 260) -> alt.Chart:
    """Rank (1 at the top) of every probe over checkpoints; ``highlight`` probes coloured, others grey.

    traj: ``rank_trajectories`` output (+ images_seen when x is images_seen); labels: probe -> text.
    """
    if traj is None or traj.empty:
        return placeholder("No ranking: this channel has no statistics.", width=width)
    d = traj.copy()
    labels = labels or {}
    hl = set(int(p) for p in highlight)
    d["probe_label"] = [labels.get(int(p), f"#{int(p)}") for p in d["probe"]]
    d["group"] = np.where(d["probe"].isin(hl), d["probe_label"], "other")
    order = [labels.get(p, f"#{p}") for p in highlight]
    color = alt.Color("group:N", title="probe", scale=alt.Scale(domain=[*order, "other"],
                                                                range=[*palette(len(order)), "#d0d0d0"]))
    n = int(d["rank"].max())
    xq = x_encoding(x)
    base = alt.Chart(d).encode(
        x=xq, y=alt.Y("rank:Q", title="rank (1 = most active)", scale=alt.Scale(domain=[n + 0.5, 0.5]),
                      axis=alt.Axis(tickMinStep=1)),
        detail="probe:N", color=color,
        tooltip=[alt.Tooltip("probe_label:N", title="probe"), alt.Tooltip("mini_epoch:Q", title="mini-epoch"),
                 alt.Tooltip("rank:Q"), alt.Tooltip("value:Q", format=".4g")])
    others = base.transform_filter("datum.group == 'other'").mark_line(strokeWidth=1, opacity=0.6)
    top = base.transform_filter("datum.group != 'other'").mark_line(strokeWidth=2.5, point=alt.OverlayMarkDef(size=25))
    layers = [others, top]
    if current is not None and x == "mini_epoch":
        layers.append(alt.Chart(pd.DataFrame({x: [current]})).mark_rule(color="#999", strokeDash=[3, 3])
                      .encode(x=x_encoding(x)))
    return alt.layer(*layers).properties(width=width, height=height)


def palette(n: int) -> list[str]:
    base = ["#4c78a8", "#f58518", "#e45756", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6",
            "#9d755d", "#bab0ac", "#1f77b4", "#d62728"]
    return [base[i % len(base)] for i in range(n)]


def to_uint8(x01: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (..., 3) -> uint8; NaN pixels magenta (like the channel grids)."""
    nan = ~np.isfinite(x01).all(axis=-1)
    out = np.clip(np.nan_to_num(x01, nan=0.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out[nan] = grids.NONFINITE_RGB
    return out


def filter_grid(kernel: np.ndarray, tile_px: int = 48, cols: int = 16, labels: bool = True,
                selected: int | None = None) -> np.ndarray:
    """All filters of a first-layer kernel as one uint8 image, each tile min-max normalised and upscaled."""
    rgb = to_uint8(filter_rgb(kernel))
    k = grids.upscale_factor(rgb.shape[1], rgb.shape[2], tile_px)
    tiles = grids.upscale(rgb, k)
    n = len(tiles)
    text = [f"#{i}" for i in range(n)]
    marks = ["selected" if i == selected else None for i in range(n)]
    return grids.compose_grid(tiles, text, marks, cols, label_h=14 if labels else 0)


def filter_evolution(kernels: Sequence[tuple[int, np.ndarray]], filters: Sequence[int], tile_px: int = 40,
                     scale: str = "filter") -> np.ndarray:
    """Rows = ``filters``, columns = checkpoints: uint8 image of first-layer filters over training.

    kernels: (mini_epoch, kernel (kh, kw, in, out)) in checkpoint order. ``scale``: "filter"
    normalises each filter at each checkpoint by its own min..max; "over_time" uses each
    filter's min..max over every checkpoint shown (so growth and shrinkage are visible).
    """
    if not kernels or not len(filters):
        return np.full((8, 8, 3), 255, np.uint8)
    filters = [int(f) for f in filters]
    lo = hi = None
    if scale == "over_time":
        lo, hi = filter_ranges([k for _, k in kernels])
    elif scale != "filter":
        raise ValueError("scale must be 'filter' or 'over_time'")
    cols = []
    for _, kern in kernels:
        rgb = to_uint8(filter_rgb(kern, lo, hi))
        cols.append(rgb[filters])
    t = len(kernels)
    tiles = np.stack(cols, axis=1).reshape(len(filters) * t, *cols[0].shape[1:])  # row-major: filter x ckpt
    k = grids.upscale_factor(tiles.shape[1], tiles.shape[2], tile_px)
    tiles = grids.upscale(tiles, k)
    text = [f"#{f} · me {me}" for f in filters for me, _ in kernels]
    return grids.compose_grid(tiles, text, [None] * len(text), t, label_h=14)


def probe_tiles(images: np.ndarray, px: int = 96) -> np.ndarray:
    """uint8 (N, H, W, C) probe images -> uint8 (N, ~px, ~px, 3) nearest-neighbour upscaled for display."""
    x = np.asarray(images, np.uint8)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return grids.upscale(x, grids.upscale_factor(x.shape[1], x.shape[2], px))
