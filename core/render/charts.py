"""Chart builders: one function per chart, tidy DataFrame in, Altair chart out; missing data says so."""
from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from core.analysis.axes import X_FIELDS, x_map



def placeholder(message: str, width: int = 400, height: int = 60) -> alt.Chart:
    """A chart that only shows ``message``: used when the data for a chart is missing."""
    return alt.Chart(pd.DataFrame({"m": [message]})).mark_text(align="left", fontSize=13, color="#666").encode(
        text="m:N").properties(width=width, height=height)


def training_curves(history: pd.DataFrame, x: str = "mini_epoch", runs: str | None = None) -> alt.Chart:
    """Loss, accuracy and learning rate against mini-epoch (or images seen); hover shows the values.

    history: one row per (run,) mini-epoch with HISTORY_COLUMNS; ``runs`` names a
    column that tells runs apart (colour) when several are stacked.
    """
    if history is None or history.empty:
        return placeholder("No history yet: the run has no completed mini-epoch.")
    if x not in X_FIELDS:
        raise ValueError(f"x must be one of {list(X_FIELDS)}")
    id_vars = [x] + ([runs] if runs else [])
    panels = {"loss": ["loss", "val_loss"], "accuracy": ["accuracy", "val_accuracy"], "learning rate": ["lr"]}
    charts = []
    for i, (title, cols) in enumerate(panels.items()):
        cols = [c for c in cols if c in history and history[c].notna().any()]
        if not cols:
            charts.append(placeholder(f"No {title} recorded.", width=230))
            continue
        long = history.melt(id_vars=id_vars, value_vars=cols, var_name="series", value_name="value").dropna()
        sel = alt.selection_point(fields=[x], nearest=True, on="pointerover", empty=False, name=f"hover_{i}")
        color = (alt.Color(f"{runs}:N", title="run") if runs
                 else alt.Color("series:N", title=None, legend=alt.Legend(orient="bottom")))
        base = alt.Chart(long).encode(
            x=x_encoding(x),
            y=alt.Y("value:Q", title=title, scale=alt.Scale(type="log") if title == "learning rate" else alt.Scale()),
            color=color,
            strokeDash=alt.StrokeDash("series:N", title=None) if runs else alt.value([1, 0]),
            tooltip=[*(alt.Tooltip(f"{runs}:N") for _ in [0] if runs), alt.Tooltip(f"{x}:Q"),
                     alt.Tooltip("series:N"), alt.Tooltip("value:Q", format=".4g")],
        )
        lines = base.mark_line(point=alt.OverlayMarkDef(size=20))
        # The hover selection sits on invisible points (Vega-Lite's nearest does not work on lines); the
        # rule is drawn everywhere and shown only where selected (a filtered, empty rule warns in the browser).
        catch = base.mark_point(opacity=0).add_params(sel)
        rule = alt.Chart(long).mark_rule(color="#999").encode(
            x=x_encoding(x), opacity=alt.condition(sel, alt.value(1), alt.value(0)))
        charts.append((lines + catch + rule).properties(width=230, height=190, title=title))
    return alt.hconcat(*charts).resolve_scale(color="independent")


# ---------------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------------

alt.data_transformers.disable_max_rows()  # tables here are tidy and modest; export needs inline data

MAX_LEGEND = 14  # more series than this: no legend, colour by order (depth) instead
STAT_COLORS = {"min": "#4c78a8", "max": "#e45756", "mean": "#54a24b", "std": "#f58518"}
DASHES = [[1, 0], [6, 3], [2, 2], [8, 3, 2, 3], [1, 3], [10, 4]]
WIDTH, HEIGHT = 620, 240
#: Legends of lines (with points): each entry a stroke in its colour, not the points' dot.
LINE_LEGEND = alt.Legend(orient="bottom", symbolType="stroke", symbolStrokeWidth=2.5, symbolSize=300, labelLimit=240)
#: ... and of dash styles alone (no colour of their own): grey strokes in each dash pattern.
DASH_LEGEND = alt.Legend(orient="bottom", symbolType="stroke", symbolStrokeWidth=2.5, symbolSize=300,
                         symbolStrokeColor="#444444", labelLimit=240)


def _s(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Copy of ``df`` with categorical columns among ``cols`` turned into plain strings (Altair-friendly)."""
    out = df.copy()
    for c in cols:
        if c in out and (isinstance(out[c].dtype, pd.CategoricalDtype) or out[c].dtype == object):
            out[c] = out[c].astype(str)
    return out


def with_x(df: pd.DataFrame, x: str, history: pd.DataFrame | None = None, mini_epoch_images: int = 0
           ) -> pd.DataFrame:
    """``df`` (with a mini_epoch column) plus an ``images_seen`` column when ``x`` asks for it."""
    if x not in X_FIELDS:
        raise ValueError(f"x must be one of {list(X_FIELDS)}")
    if x == "mini_epoch" or "images_seen" in df or df.empty:
        return df
    m = x_map(history, df["mini_epoch"].unique(), mini_epoch_images)
    return df.merge(m, on="mini_epoch", how="left")


def x_encoding(x: str, ordinal: bool = False) -> alt.X:
    """The x encoding of a chart over training: mini-epochs as whole numbers, images seen as 1.2k / 3M."""
    if ordinal:
        return alt.X(f"{x}:O", title=X_FIELDS[x], axis=alt.Axis(labelOverlap=True, labelAngle=0))
    axis = alt.Axis(format="~s") if x == "images_seen" else alt.Axis(tickMinStep=1, format="d")
    return alt.X(f"{x}:Q", title=X_FIELDS[x], axis=axis)


def log_scale(values: pd.Series) -> alt.Scale:
    """A log y scale that keeps zeros (a dead channel, a switched-off squeeze path) on the chart.

    With values <= 0 it is symmetric-log, linear below the smallest positive magnitude, so zeros sit at
    the bottom of the axis instead of disappearing.
    """
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if not len(v) or (v > 0).all():
        return alt.Scale(type="log")
    pos = np.abs(v[v != 0])
    return alt.Scale(type="symlog", constant=float(pos.min()) if len(pos) else 1.0)


def _tt(x: str) -> alt.Tooltip:
    return alt.Tooltip(f"{x}:Q", title=X_FIELDS[x], format=",")


def _props(chart, width: int, height: int, title: str = ""):
    """``chart.properties`` with the title only when there is one."""
    return chart.properties(width=width, height=height, **({"title": title} if title else {}))


def _empty(df: pd.DataFrame | None, what: str) -> alt.Chart | None:
    return placeholder(f"No {what} for this run.") if df is None or df.empty else None


# ---------------------------------------------------------------------------------------------------
# Activation dynamics
# ---------------------------------------------------------------------------------------------------


def activation_dynamics(df: pd.DataFrame, x: str = "mini_epoch", log: bool = False, title: str = "",
                        history: pd.DataFrame | None = None, width: int = WIDTH) -> alt.Chart:
    """Min, max, mean (left axis) and std (right axis) over checkpoints; one line style per image.

    df: one row per (image, mini_epoch) with columns image (label), mini_epoch, min, max,
    mean, std (+ images_seen when x is images_seen). ``log``: symlog left axis (values
    may be negative), log right axis. With ``history``, the training loss is drawn in a
    panel below on the same x.
    """
    if (e := _empty(df, "activation statistics")) is not None:
        return e
    d = _s(df, ["image"])
    images = list(dict.fromkeys(d["image"]))
    # the legend draws each image's dash pattern (lines with points otherwise get a dot per entry)
    dash = alt.StrokeDash("image:N", title="image", scale=alt.Scale(domain=images, range=DASHES[:len(images)]),
                          legend=DASH_LEGEND if len(images) > 1 else None)
    color = alt.Color("stat:N", title=None, scale=alt.Scale(domain=list(STAT_COLORS), range=list(STAT_COLORS.values())),
                      legend=alt.Legend(orient="top"))
    tips = [_tt(x) if x == "images_seen" else alt.Tooltip("mini_epoch:Q", title="mini-epoch"),
            alt.Tooltip("image:N"), alt.Tooltip("stat:N"), alt.Tooltip("value:Q", format=".4g")]
    left = d.melt(id_vars=[x, "image"] + (["mini_epoch"] if x != "mini_epoch" else []),
                  value_vars=["min", "max", "mean"], var_name="stat", value_name="value")
    right = d.melt(id_vars=[x, "image"] + (["mini_epoch"] if x != "mini_epoch" else []),
                   value_vars=["std"], var_name="stat", value_name="value")
    if log:
        right = right[right["value"] >= 0]  # zeros stay (log_scale)
    lines_l = alt.Chart(left).mark_line(point=alt.OverlayMarkDef(size=18)).encode(
        x=x_encoding(x), y=alt.Y("value:Q", title="min / max / mean",
                         scale=alt.Scale(type="symlog") if log else alt.Scale(zero=False)),
        color=color, strokeDash=dash, detail="stat:N", tooltip=tips)
    lines_r = alt.Chart(right).mark_line(point=alt.OverlayMarkDef(size=18), strokeWidth=2.5).encode(
        x=x_encoding(x), y=alt.Y("value:Q", title="std", scale=log_scale(right["value"]) if log else alt.Scale(zero=True),
                         axis=alt.Axis(titleColor=STAT_COLORS["std"], orient="right")),
        color=color, strokeDash=dash, tooltip=tips)
    top = _props(alt.layer(lines_l, lines_r).resolve_scale(y="independent"), width, HEIGHT, title)
    if history is None:
        return top
    return alt.vconcat(top, loss_panel(history, x, width=width)).resolve_scale(x="shared", color="independent",
                                                                                 strokeDash="independent")


def loss_panel(history: pd.DataFrame | None, x: str = "mini_epoch", width: int = WIDTH, height: int = 110,
               log: bool = False) -> alt.Chart:
    """Training (and validation) loss against mini-epoch or images seen; a small panel for stacking."""
    if history is None or history.empty or "loss" not in history:
        return placeholder("No training loss recorded yet.", width=width)
    cols = [c for c in ("loss", "val_loss") if c in history and history[c].notna().any()]
    h = history.copy()
    if x == "images_seen" and "images_seen" not in h:
        h["images_seen"] = float("nan")
    long = h.melt(id_vars=["mini_epoch"] + (["images_seen"] if x == "images_seen" else []), value_vars=cols,
                  var_name="series", value_name="value").dropna(subset=["value"])
    return alt.Chart(long).mark_line(point=alt.OverlayMarkDef(size=14)).encode(
        x=x_encoding(x), y=alt.Y("value:Q", title="loss", scale=alt.Scale(type="log") if log else alt.Scale(zero=False)),
        color=alt.Color("series:N", title=None, scale=alt.Scale(domain=["loss", "val_loss"],
                                                                range=["#333333", "#9d755d"]),
                        legend=LINE_LEGEND),
        tooltip=[alt.Tooltip("mini_epoch:Q", title="mini-epoch"), alt.Tooltip("series:N"),
                 alt.Tooltip("value:Q", title="loss", format=".4g")],
    ).properties(width=width, height=height)


def channel_heatmap(df: pd.DataFrame, value: str = "std", x: str = "mini_epoch", log: bool = True,
                    title: str = "", width: int = WIDTH) -> alt.Chart:
    """Channels x checkpoints heat map of one statistic (std: log colour; mean: diverging around 0).

    df: one row per (channel, mini_epoch) with the ``value`` column (+ images_seen).
    Non-positive values on a log scale are drawn grey ("zero / dead").
    """
    if (e := _empty(df, "channel statistics")) is not None:
        return e
    d = df[["channel", "mini_epoch", value] + (["images_seen"] if x == "images_seen" else [])].copy()
    n_ch = d["channel"].nunique()
    h = max(160, min(640, 10 * n_ch))
    tips = [alt.Tooltip("channel:O"), alt.Tooltip("mini_epoch:O", title="mini-epoch"),
            alt.Tooltip(f"{value}:Q", format=".4g")]
    base = alt.Chart(d).encode(x=x_encoding(x, ordinal=True), y=alt.Y("channel:O", title="channel",
                                                               axis=alt.Axis(labelOverlap=True)), tooltip=tips)
    diverging = value == "mean"
    if log and not diverging:
        good = base.transform_filter(f"datum['{value}'] > 0").mark_rect().encode(
            color=alt.Color(f"{value}:Q", scale=alt.Scale(type="log", scheme="viridis"), title=value))
        bad = base.transform_filter(f"!(datum['{value}'] > 0)").mark_rect(color="#d0d0d0")
        chart = alt.layer(bad, good)
    else:
        sc = alt.Scale(scheme="redblue", domainMid=0, reverse=True) if diverging else alt.Scale(scheme="viridis")
        chart = base.mark_rect().encode(color=alt.Color(f"{value}:Q", scale=sc, title=value))
    return _props(chart, width, h, title)


def normalised_to_reference(layers: pd.DataFrame, value: str = "std", ref_mini_epoch: int = 1) -> pd.DataFrame:
    """Per layer and checkpoint, ``value`` (mean over probes) divided by its value at ``ref_mini_epoch``.

    layers: the sweep's ``layers`` table (mini_epoch, probe, layer, depth, ``value``).
    Returns layer, depth, mini_epoch, value, ref, ratio (NaN when the reference is 0 or missing).
    If ``ref_mini_epoch`` is absent, the first mini-epoch present is used.
    """
    if layers is None or layers.empty:
        return pd.DataFrame(columns=["layer", "depth", "mini_epoch", "value", "ref", "ratio"])
    d = layers.assign(layer=layers["layer"].astype(str))
    g = d.groupby(["layer", "mini_epoch"], observed=True).agg(value=(value, "mean"), depth=("depth", "first"))
    g = g.reset_index()
    mes = sorted(g["mini_epoch"].unique())
    ref_me = ref_mini_epoch if ref_mini_epoch in mes else mes[0]
    ref = g[g["mini_epoch"] == ref_me].set_index("layer")["value"]
    g["ref"] = g["layer"].map(ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        g["ratio"] = np.where(g["ref"] > 0, g["value"] / g["ref"], np.nan)
    g["depth"] = g["depth"].astype("int64")
    return g.sort_values(["depth", "mini_epoch"]).reset_index(drop=True)[
        ["layer", "depth", "mini_epoch", "value", "ref", "ratio"]]


def collapse_heatmap(norm: pd.DataFrame, ref_mini_epoch: int = 1, x: str = "mini_epoch", width: int = WIDTH,
                     clip: float = 100.0) -> alt.Chart:
    """Layers (depth order, top = input) x checkpoints heat map of std / std at the reference, log colour.

    norm: output of ``normalised_to_reference``. Red = shrinking, blue = growing, white = unchanged;
    ratios are clipped to [1/clip, clip] and the colour domain is symmetric around 1; missing ratios
    (zero reference) are grey.
    """
    if (e := _empty(norm, "layer statistics")) is not None:
        return e
    d = norm.copy()
    d["shown"] = d["ratio"].clip(1.0 / clip, clip)
    fin = d["shown"][np.isfinite(d["shown"])]
    # symmetric log domain around 1 covering the data: at least 10x either way, at most ``clip``
    span = float(min(clip, max(10.0, (np.maximum(fin, 1.0 / fin)).max() if len(fin) else 10.0)))
    order = list(dict.fromkeys(d.sort_values("depth")["layer"]))
    h = max(140, min(720, 14 * len(order)))
    tips = [alt.Tooltip("layer:N"), alt.Tooltip("depth:Q"), alt.Tooltip("mini_epoch:O", title="mini-epoch"),
            alt.Tooltip("value:Q", title="std", format=".4g"),
            alt.Tooltip("ref:Q", title=f"std at mini-epoch {ref_mini_epoch}", format=".4g"),
            alt.Tooltip("ratio:Q", title="ratio", format=".3g")]
    base = alt.Chart(d).encode(x=x_encoding(x, ordinal=True), y=alt.Y("layer:N", sort=order, title=None), tooltip=tips)
    bad = base.transform_filter("!isValid(datum.shown) || !isFinite(datum.shown)").mark_rect(color="#d0d0d0")
    good = base.transform_filter("isValid(datum.shown) && isFinite(datum.shown)").mark_rect().encode(
        color=alt.Color("shown:Q", title=f"std ÷ std@{ref_mini_epoch}",
                        scale=alt.Scale(type="log", scheme="redblue", domainMid=1, domain=[1.0 / span, span])))
    return alt.layer(bad, good).properties(width=width, height=h)


# ---------------------------------------------------------------------------------------------------
# SE gates
# ---------------------------------------------------------------------------------------------------


def gate_histogram(hist: pd.DataFrame, title: str = "", width: int = 300, height: int = 160,
                   xtitle: str = "gate value") -> alt.Chart:
    """Bars of one histogram: rows bin_left, bin_right, count (one block, one checkpoint, one kind)."""
    if (e := _empty(hist, "histogram")) is not None:
        return e
    d = hist[["bin_left", "bin_right", "count"]].copy()
    tot = d["count"].sum()
    d["fraction"] = d["count"] / tot if tot else 0.0
    return _props(alt.Chart(d).mark_rect(color="#4c78a8", stroke="white", strokeWidth=0.5).encode(
        x=alt.X("bin_left:Q", title=xtitle, bin="binned"), x2="bin_right:Q",
        y=alt.Y("fraction:Q", title="fraction", axis=alt.Axis(format="%")),
        tooltip=[alt.Tooltip("bin_left:Q", title="from", format=".3g"), alt.Tooltip("bin_right:Q", title="to", format=".3g"),
                 alt.Tooltip("count:Q"), alt.Tooltip("fraction:Q", format=".1%")],
    ), width, height, title)


def hist_evolution(hist: pd.DataFrame, x: str = "mini_epoch", title: str = "", width: int = 300, height: int = 160,
                   ytitle: str = "gate value") -> alt.Chart:
    """Bins x checkpoints heat map of a histogram's fractions (rows mini_epoch, bin_left, bin_right, count)."""
    if (e := _empty(hist, "histograms")) is not None:
        return e
    d = hist[["mini_epoch", "bin_left", "bin_right", "count"]].copy()
    tot = d.groupby("mini_epoch")["count"].transform("sum")
    d["fraction"] = np.where(tot > 0, d["count"] / tot.where(tot > 0, 1), 0.0)
    if x == "images_seen" and "images_seen" in hist:
        d["images_seen"] = hist["images_seen"].to_numpy()
    return _props(alt.Chart(d).mark_rect().encode(
        x=x_encoding(x, ordinal=True), y=alt.Y("bin_left:Q", title=ytitle, bin="binned"), y2="bin_right:Q",
        color=alt.Color("fraction:Q", scale=alt.Scale(scheme="greys", type="sqrt"), title="fraction"),
        tooltip=[alt.Tooltip("mini_epoch:O", title="mini-epoch"), alt.Tooltip("bin_left:Q", title="from", format=".3g"),
                 alt.Tooltip("bin_right:Q", title="to", format=".3g"), alt.Tooltip("fraction:Q", format=".1%")],
    ), width, height, title)


GATE_FRACTIONS = {"frac_low": "gates < 0.05 (off)", "frac_high": "gates > 0.95 (open)",
                  "frac_half": "gates ≈ 0.5 (dead squeeze path)"}


def gate_fractions(gates: pd.DataFrame, x: str = "mini_epoch", width: int = 215, height: int = 170) -> alt.Chart:
    """Three panels (off / open / near 0.5) of the fraction of gates per SE block over checkpoints.

    gates: the sweep's ``gates`` table (mean over probes is taken here).
    """
    if (e := _empty(gates, "SE gate statistics")) is not None:
        return e
    keys = ["block", "mini_epoch"] + (["images_seen"] if x == "images_seen" else [])
    d = _s(gates, ["block"]).groupby(keys, observed=True)[list(GATE_FRACTIONS)].mean().reset_index()
    long = d.melt(id_vars=keys, value_vars=list(GATE_FRACTIONS), var_name="measure", value_name="fraction")
    panels = []
    for m, t in GATE_FRACTIONS.items():
        part = long[long["measure"] == m]
        same = coinciding_series(part, "block", "mini_epoch", "fraction")
        # Identical lines hide each other: dash and marker per block, and the subtitle names them.
        title = alt.TitleParams(t, subtitle=["same line: " + ", ".join(g) for g in same] or "")
        panels.append(alt.Chart(part).mark_line(point=alt.OverlayMarkDef(size=30, filled=False)).encode(
            x=x_encoding(x), y=alt.Y("fraction:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"), title=None),
            color=alt.Color("block:N", title="SE block"),
            strokeDash=alt.StrokeDash("block:N", title="SE block"),
            shape=alt.Shape("block:N", title="SE block"),
            tooltip=[alt.Tooltip("block:N"), alt.Tooltip("mini_epoch:Q", title="mini-epoch"),
                     alt.Tooltip("fraction:Q", format=".1%")],
        ).properties(width=width, height=height, title=title))
    return alt.hconcat(*panels)


def coinciding_series(df: pd.DataFrame, by: str, x: str, y: str) -> list[list[str]]:
    """Groups (two or more, sorted) of ``by`` values whose (x, y) series are identical: lines drawn on top
    of each other, which a chart must name since only the last one drawn is visible."""
    if df is None or df.empty:
        return []
    groups: dict[tuple, list[str]] = {}
    for key, g in df.groupby(by, observed=True):
        sig = tuple(g.sort_values(x)[[x, y]].round(9).itertuples(index=False, name=None))
        groups.setdefault(sig, []).append(str(key))
    return sorted(sorted(v) for v in groups.values() if len(v) > 1)


def mean_over_probes(df: pd.DataFrame, keys: list[str], cols: list[str]) -> pd.DataFrame:
    """Mean of ``cols`` over the probe dimension, grouped by ``keys`` (categoricals -> str)."""
    d = _s(df, [k for k in keys if k != "mini_epoch"])
    return d.groupby(keys, observed=True)[cols].mean().reset_index()


def lines_by(df: pd.DataFrame, y: str, by: str, x: str = "mini_epoch", log: bool = False, title: str = "",
             ytitle: str | None = None, width: int = WIDTH, height: int = HEIGHT, legend: bool = True,
             sort: list[str] | None = None, legend_orient: str = "right") -> alt.Chart:
    """One line per value of ``by`` (layer, block, channel...) of column ``y`` over checkpoints; hover shows it.

    df: one row per (``by``, mini_epoch) (+ images_seen). ``log``: log y (non-positive values dropped).
    ``legend_orient``: "bottom" for a chart in a narrow column (a right legend would be clipped).
    ``sort``: the order of the series (depth order for layers). Beyond MAX_LEGEND series there is no
    legend; the colour then runs along ``sort`` (light = first, dark = last) and hover names a line.
    """
    if (e := _empty(df, ytitle or y)) is not None:
        return e
    d = _s(df, [by])
    d = d[np.isfinite(d[y].astype(float))]
    if log:
        d = d[d[y] >= 0]  # zeros stay (log_scale)
    if d.empty:
        return placeholder(f"No finite {'non-negative ' if log else ''}values of {ytitle or y}.", width=width)
    hover = alt.selection_point(fields=[by], on="pointerover", nearest=True, empty=True)
    n = d[by].nunique()
    if n <= MAX_LEGEND:
        color = alt.Color(f"{by}:N", title=by, sort=sort or "ascending",
                          legend=alt.Legend(symbolLimit=0, labelLimit=160, orient=legend_orient,
                                            columns=2 if legend_orient == "bottom" else 1) if legend else None)
    else:  # a legend this long gets clipped in Streamlit: colour follows ``sort`` (depth), hover names the line
        order = [v for v in (sort or sorted(d[by].unique())) if v in set(d[by])]
        color = alt.Color(f"{by}:N", title=f"{by} (dark = deep)", sort=order,
                          scale=alt.Scale(domain=order, scheme="viridis", reverse=True), legend=None)
    tips = [alt.Tooltip(f"{by}:N"), alt.Tooltip("mini_epoch:Q", title="mini-epoch"),
            alt.Tooltip(f"{y}:Q", format=".4g")]
    if x == "images_seen":
        tips.insert(2, _tt(x))
    base = alt.Chart(d).encode(
        x=x_encoding(x), y=alt.Y(f"{y}:Q", title=ytitle or y, scale=log_scale(d[y]) if log else alt.Scale(zero=False),
                                 axis=alt.Axis(titleLimit=max(height, 120))),  # a long title ends in "…" inside the chart, not cut off by the canvas
        color=color, tooltip=tips)
    lines = base.mark_line().encode(opacity=alt.condition(hover, alt.value(1.0), alt.value(0.25)),
                                    strokeWidth=alt.condition(hover, alt.value(2.5), alt.value(1.5)))
    pts = base.mark_point(size=18, filled=True).add_params(hover)
    return _props(alt.layer(lines, pts), width, height, title)


def top_series(df: pd.DataFrame, by: str, y: str, n: int) -> pd.DataFrame:
    """The rows of the ``n`` series of ``by`` with the largest ``y`` at their last checkpoint (the rest of
    a many-layer chart is a tangle without a legend)."""
    if df is None or df.empty or df[by].nunique() <= n:
        return df
    last = df.sort_values("mini_epoch").groupby(by, observed=True)[y].last().astype(float).fillna(-np.inf)
    keep = set(last.sort_values(ascending=False, kind="stable").index[:n])
    return df[df[by].isin(keep)].reset_index(drop=True)


def gate_product(gates: pd.DataFrame, block_order: list[str]) -> pd.DataFrame:
    """Cumulative product of each block's mean gate along the trunk, per checkpoint.

    gates: the ``gates`` table (mini_epoch, probe, block, mean); block_order: blocks in depth
    order. Returns mini_epoch, block, position (1-based), mean_gate, product (product of
    the mean gates of this block and every block before it).
    """
    cols = ["mini_epoch", "block", "position", "mean_gate", "product"]
    if gates is None or gates.empty:
        return pd.DataFrame(columns=cols)
    m = mean_over_probes(gates, ["mini_epoch", "block"], ["mean"]).rename(columns={"mean": "mean_gate"})
    pos = {b: i + 1 for i, b in enumerate(block_order)}
    m = m[m["block"].isin(pos)].copy()
    m["position"] = m["block"].map(pos).astype("int64")
    m = m.sort_values(["mini_epoch", "position"])
    m["product"] = m.groupby("mini_epoch")["mean_gate"].cumprod()
    return m.reset_index(drop=True)[cols]


def gate_channel_lines(gc: pd.DataFrame, x: str = "mini_epoch", value: str = "gate", title: str = "",
                       width: int = WIDTH, height: int = HEIGHT) -> alt.Chart:
    """Per-channel gate trajectories of one block (mean over probes), one line per channel.

    gc: ``gate_channels`` rows of one block (mini_epoch, probe, channel, gate, logit).
    """
    if (e := _empty(gc, "per-channel gates")) is not None:
        return e
    keys = ["channel", "mini_epoch"] + (["images_seen"] if x == "images_seen" else [])
    d = gc.groupby(keys, observed=True)[[value]].mean().reset_index()
    d["channel"] = d["channel"].astype(int)
    hover = alt.selection_point(fields=["channel"], on="pointerover", nearest=True, empty=False)
    base = alt.Chart(d).encode(
        x=x_encoding(x), y=alt.Y(f"{value}:Q", title=value, scale=alt.Scale(domain=[0, 1]) if value == "gate" else alt.Scale()),
        detail="channel:N",
        tooltip=[alt.Tooltip("channel:Q"), alt.Tooltip("mini_epoch:Q", title="mini-epoch"),
                 alt.Tooltip(f"{value}:Q", format=".4g")])
    lines = base.mark_line(opacity=0.6).encode(
        color=alt.condition(hover, alt.value("#e45756"), alt.value("#4c78a8")),
        strokeWidth=alt.condition(hover, alt.value(3), alt.value(1.2)))
    pts = base.mark_point(size=12, filled=True, opacity=0.0).add_params(hover)
    return _props(alt.layer(lines, pts), width, height, title)


# ---------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------

WEIGHT_METRICS = {"norm": "‖W‖", "dist_from_init": "‖W − W₀‖", "rel_dist_from_init": "‖W − W₀‖ / ‖W₀‖",
                  "update_ratio": "‖ΔW‖ / ‖W‖", "update_norm": "‖ΔW‖"}


def weights_by_layer(weights: pd.DataFrame, variable: str = "kernel") -> pd.DataFrame:
    """Rows of the ``weights`` table for one variable name (``kernel``, ``gamma``...); layer as str."""
    if weights is None or weights.empty:
        return pd.DataFrame()
    d = _s(weights, ["layer", "variable"])
    return d[d["variable"] == variable].reset_index(drop=True)


def channel_trajectory(ch: pd.DataFrame, x: str = "mini_epoch", title: str = "", width: int = 520,
                       log: bool = False) -> alt.Chart:
    """Min / max / mean / std of one channel over checkpoints (rows mini_epoch, min, max, mean, std)."""
    if (e := _empty(ch, "trajectory")) is not None:
        return e
    d = ch.copy()
    d["image"] = d.get("image", "image")
    return activation_dynamics(d, x=x, log=log, title=title, width=width)
