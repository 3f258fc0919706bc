"""Findings and the ranked scale-change table on the pages; turning a finding's view into a link or a page switch."""
from __future__ import annotations

from typing import Any, Sequence
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import streamlit as st

from ui import cache
from ui.widgets import PAGE_TITLES

BADGES = {"problem": "red", "warning": "orange", "info": "blue"}


def view_url(run: str, view: Any) -> str:
    """Relative URL of the page showing ``view`` (a ``core.analysis.diagnose.View``) for run ``run``."""
    q = {"run": run, "ckpt": int(view.checkpoint)}
    if view.layer:
        q["layer"] = view.layer
    if view.block:
        q["block"] = view.block
    return f"{view.page}?{urlencode(q)}"


def open_view(view: Any) -> None:
    """Button callback: select the view's layer, SE block and checkpoint, then switch to its page."""
    from ui import state

    state.goto(view.page, layer=view.layer or None, ckpt=int(view.checkpoint), block=view.block or None)


def findings_for_page(findings: Sequence[Any], page: str) -> list[Any]:
    """The findings to list on ``page``: all of them on the overview, else those whose view is that page."""
    return list(findings) if page == "overview" else [f for f in findings if f.view.page == page]


def _evidence_value(v: Any) -> str | None:
    """One evidence value as a reader sees it; None for a missing number."""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.3g}" if np.isfinite(v) else None
    if isinstance(v, (list, tuple)):
        parts = [p for p in map(_evidence_value, v) if p is not None]
        return ", ".join(parts) if parts else None
    return str(v)


def evidence_markdown(ev: dict) -> str:
    """Evidence as a Markdown list of "Label: value" lines (numbers to 3 significant digits, yes/no for
    flags, missing values left out): whole lines that wrap, never one clipped run of raw keys."""
    lines = []
    for k, v in ev.items():
        text = _evidence_value(v)
        if text is not None:
            label = str(k).replace("_", " ")
            label = "number of " + label[2:] if label.startswith("n ") else label
            lines.append(f"- {label[:1].upper()}{label[1:]}: {text}")
    return "\n".join(lines)


def findings_panel(findings: Sequence[Any] | None, page: str) -> None:
    """One line per finding (severity badge, kind, onset, message), a "Why?" expander with the likely causes,
    what to try and the run's evidence, and a button that opens the view showing it."""
    rows = findings_for_page(findings or [], page)
    if not rows:
        return
    counts = {s: sum(f.severity == s for f in rows) for s in ("problem", "warning")}
    summary = ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in counts.items() if n)
    label = (f"Findings for this {'run' if page == 'overview' else 'page'}: {len(rows)}"
             + (f" ({summary})" if summary else ""))
    with st.expander(label, expanded=page == "overview", icon=":material/troubleshoot:"), \
            st.container(height=520 if len(rows) > 5 else "content", border=False):  # long lists scroll
        for i, f in enumerate(rows):
            c1, c2 = st.columns([8, 1], vertical_alignment="center")
            c1.markdown(f":{BADGES.get(f.severity, 'blue')}-badge[{f.severity}] **{f.kind.replace('_', ' ')}** · "
                        f"from mini-epoch {f.mini_epoch} — {f.message}")
            if f.advice is not None:
                with c1.expander("Why?"):
                    st.markdown(f"**Usually caused by** {f.advice.causes}.\n\n**Try** {f.advice.remedy}.")
                    if f.advice.observed:
                        st.markdown(f"**In this run:** {f.advice.observed}")
                    if f.evidence:
                        st.markdown("**Evidence**\n\n" + evidence_markdown(f.evidence))
            v = f.view
            if v.page in PAGE_TITLES:
                what = v.block or v.layer
                c2.button("Show", key=f"finding_{page}_{i}", on_click=open_view, args=(v,),
                          help=f"Open {PAGE_TITLES[v.page]}" + (f" at {what}" if what else "")
                               + f", mini-epoch {v.checkpoint}")


# ---- scale changes (Overview) ---------------------------------------------------------------------------

BASELINE_HELP = (
    "Each layer's activation std (median over the probe images) against its **baseline**: the first checkpoint "
    "the diagnostics judge. Without BatchNorm that is mini-epoch 0. **Behind a BatchNorm, mini-epoch 0 is "
    "special:** the moving statistics still hold their initial values (mean 0, variance 1), so inference-mode "
    "activations of deep layers look tiny in every run; the baseline is the first checkpoint where the moving "
    "statistics have caught up. *Onset* is the first mini-epoch where the std is 10x below (shrink) or above "
    "(growth) the baseline; layers that cross at the same mini-epoch are grouped, the first row of a group is "
    "where it starts and is the layer an `activation_collapse` finding names.")


def scale_display(table: pd.DataFrame, run: str) -> pd.DataFrame:
    """The scale-change table with readable columns, a sparkline column and a link to Dynamics per row."""
    from core.analysis.diagnose import View

    t = table
    return pd.DataFrame({
        "layer": t["layer"], "kind": t["kind"],
        "change": [f"{c:.1f}x {'smaller' if d == 'shrink' else 'larger'}" if np.isfinite(c) else "∞"
                   for c, d in zip(t["change"], t["direction"])],
        "onset": t["onset"].where(t["onset"] >= 0).astype("Int64"),
        "baseline (mini-epoch)": t["baseline_mini_epoch"],
        "std at baseline": t["std_baseline"], "std last": t["std_last"], "std min": t["std_min"],
        "min at": t["min_mini_epoch"], "mean |a| baseline": t["mean_abs_baseline"],
        "mean |a| last": t["mean_abs_last"], "std over training": t["std_series"],
        "open": [view_url(run, View("dynamics", layer=l, checkpoint=int(o if o >= 0 else m)))
                 for l, o, m in zip(t["layer"], t["onset"], t["min_mini_epoch"])],
    })


@st.cache_data(show_spinner=False, max_entries=16)
def _scale(run_path: str, ckpt_stamp: tuple, probe_key: str, hist_stamp: tuple, arch: int, trust: bool) -> pd.DataFrame:
    from core.analysis.diagnose import scale_table, thresholds_for
    from core.run.runs import Run

    run = Run(run_path)
    result = cache.sweep_tables(run_path, ckpt_stamp, probe_key, arch, trust)
    hist, _ = cache.history(run_path, hist_stamp)
    return scale_table(result, hist, run.manifest, thresholds_for(run))


def scale_changes(sel: Any) -> None:
    """The ranked table of activation-scale changes per layer (largest first), each row linking to Dynamics."""
    st.subheader("Scale changes, largest first")
    try:
        cache.swept(sel.run, sel.stamp, sel.trust, label="Statistics of the probe set")
        table = _scale(sel.path, sel.stamp, cache.probe_key(sel.run), cache.dir_stamp(sel.run.path),
                       cache.arch_mtime(sel.run), sel.trust)
    except Exception as e:  # an extra: never break the page
        st.caption(f"Scale changes unavailable ({type(e).__name__}: {e})")
        return
    st.caption(BASELINE_HELP)
    if table.empty:
        st.info("Not enough judged checkpoints to compare (at least two are needed after the BatchNorm warm-up).")
        return
    shown = scale_display(table, sel.run.name)
    st.dataframe(shown, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(shown)), key="scale_table",
                 column_config={
                     "std over training": st.column_config.LineChartColumn("std over training", width="small"),
                     "open": st.column_config.LinkColumn("open", display_text="Dynamics ↗",
                                                         help="Open this layer on the Dynamics page"),
                     **{c: st.column_config.NumberColumn(c, format="%.3g") for c in (
                         "std at baseline", "std last", "std min", "mean |a| baseline", "mean |a| last")}})
    _open_row(table)


def _open_row(table: pd.DataFrame) -> None:
    """Open one row's layer on Dynamics in this tab (the table's links open a new one), at its onset."""
    from core.analysis.diagnose import View

    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    rows = {str(l): int(o if o >= 0 else m) for l, o, m in zip(table["layer"], table["onset"], table["min_mini_epoch"])}
    layer = c1.selectbox("Layer (ranked as above)", list(rows), key="scale_open_layer")
    c2.button("Open on Dynamics", key="scale_open", on_click=open_view,
              args=(View("dynamics", layer=layer, checkpoint=rows[layer]),), width="stretch")
