"""Chart builders: one function per chart, tidy DataFrame in, Altair chart out; missing data says so."""
from __future__ import annotations

import altair as alt
import pandas as pd

X_FIELDS = {"mini_epoch": "mini-epoch", "images_seen": "images seen"}


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
    for title, cols in panels.items():
        cols = [c for c in cols if c in history and history[c].notna().any()]
        if not cols:
            charts.append(placeholder(f"No {title} recorded.", width=260))
            continue
        long = history.melt(id_vars=id_vars, value_vars=cols, var_name="series", value_name="value").dropna()
        sel = alt.selection_point(fields=[x], nearest=True, on="pointerover", empty=False)
        color = alt.Color(f"{runs}:N", title="run") if runs else alt.Color("series:N", title=None)
        base = alt.Chart(long).encode(
            x=alt.X(f"{x}:Q", title=X_FIELDS[x]),
            y=alt.Y("value:Q", title=title, scale=alt.Scale(type="log") if title == "learning rate" else alt.Scale()),
            color=color,
            strokeDash=alt.StrokeDash("series:N", title=None) if runs else alt.value([1, 0]),
            tooltip=[*(alt.Tooltip(f"{runs}:N") for _ in [0] if runs), alt.Tooltip(f"{x}:Q"),
                     alt.Tooltip("series:N"), alt.Tooltip("value:Q", format=".4g")],
        )
        lines = base.mark_line(point=alt.OverlayMarkDef(size=20))
        rule = alt.Chart(long).mark_rule(color="#999").encode(x=f"{x}:Q").transform_filter(sel)
        charts.append((lines.add_params(sel) + rule).properties(width=260, height=200, title=title))
    return alt.hconcat(*charts).resolve_scale(color="independent")
