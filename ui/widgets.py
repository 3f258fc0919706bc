"""Small reusable Streamlit widgets: charts with PNG/SVG/CSV export, the findings panel, PNG images, HTML."""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from ui import cache

PAGE_TITLES = {"overview": "Overview", "grid": "Channel grid", "dynamics": "Dynamics", "gates": "SE gates",
               "weights": "Weights", "train": "Train"}


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("_") or "chart"


def chart_png(chart: Any) -> bytes:
    """The chart rendered to PNG (2x scale) by vl-convert, no browser needed."""
    import vl_convert as vlc

    return vlc.vegalite_to_png(chart.to_json(), scale=2)


def chart_svg(chart: Any) -> str:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(chart.to_json())


#: Vega-Lite's "fit" sizing works for single and layered views only; Streamlit asks for it on others too
#: (the browser console then warns). Compositions keep their natural size.
PAD = {"type": "pad", "contains": "padding"}
COMPOSITIONS = ("hconcat", "vconcat", "concat", "facet")


def padded(spec: dict) -> dict:
    """``spec`` with ``autosize`` pad when it is a composition (concat, facet) that sets none."""
    return {**spec, "autosize": PAD} if "autosize" not in spec and any(k in spec for k in COMPOSITIONS) else spec


def chart_with_export(chart: Any, df: pd.DataFrame | None, key: str, *, where: Any = None,
                      stretch: bool = False) -> None:
    """Show an Altair chart with an Export popover: PNG, SVG (rendered only when clicked) and the table as CSV."""
    where = where if where is not None else st
    import altair as alt

    if isinstance(chart, (alt.HConcatChart, alt.VConcatChart, alt.ConcatChart, alt.FacetChart)):
        chart = chart.properties(autosize=alt.AutoSizeParams(**PAD))
    where.altair_chart(chart, width="stretch" if stretch else "content", key=f"chart_{key}")
    name = _slug(key)
    with where.popover("Export", icon=":material/download:"):
        st.download_button("PNG image", data=lambda: chart_png(chart), file_name=f"{name}.png", mime="image/png",
                           key=f"dl_png_{key}", on_click="ignore", width="stretch")
        st.download_button("SVG image", data=lambda: chart_svg(chart), file_name=f"{name}.svg",
                           mime="image/svg+xml", key=f"dl_svg_{key}", on_click="ignore", width="stretch")
        if df is not None:
            st.download_button("Table (CSV)", data=lambda: df.to_csv(index=False), file_name=f"{name}.csv",
                               mime="text/csv", key=f"dl_csv_{key}", on_click="ignore", width="stretch")


def chart(key: str, deps: tuple, build: Callable[[], tuple[Any, pd.DataFrame]], *, where: Any = None,
          stretch: bool = False) -> None:
    """A chart built by ``build() -> (altair chart, its table)``, cached on ``deps``, with an Export popover.

    ``deps``: every plain value the chart depends on (see ``ui.cache.chart_spec``). PNG, SVG
    and CSV are produced only when their download button is clicked.
    """
    where = where if where is not None else st
    spec = padded(cache.chart_spec(key, deps, build))
    where.vega_lite_chart(spec=spec, width="stretch" if stretch else "content", key=f"chart_{key}")
    name = _slug(key)

    def fresh() -> dict:
        return cache.chart_spec(key, deps, build)

    with where.popover("Export", icon=":material/download:"):
        st.download_button("PNG image", data=lambda: _vlc("png", fresh()), file_name=f"{name}.png",
                           mime="image/png", key=f"dl_png_{key}", on_click="ignore", width="stretch")
        st.download_button("SVG image", data=lambda: _vlc("svg", fresh()), file_name=f"{name}.svg",
                           mime="image/svg+xml", key=f"dl_svg_{key}", on_click="ignore", width="stretch")
        st.download_button("Table (CSV)", data=lambda: build()[1].to_csv(index=False), file_name=f"{name}.csv",
                           mime="text/csv", key=f"dl_csv_{key}", on_click="ignore", width="stretch")


def _vlc(fmt: str, spec: dict) -> bytes | str:
    import vl_convert as vlc

    return vlc.vegalite_to_png(spec, scale=2) if fmt == "png" else vlc.vegalite_to_svg(spec)


def png(pixels: np.ndarray, *, caption: str | None = None, where: Any = None, width: Any = "content") -> None:
    """Show a uint8 (H, W, 3) image as lossless PNG (encoded here, fast, so Streamlit sends it as is)."""
    from core.render.grids import to_png

    where = where if where is not None else st
    where.image(to_png(pixels), caption=caption, output_format="PNG", width=width)


class _AsIs:
    """HTML that ``st.html`` takes as is: it dedents a plain string first (``textwrap``, slow on megabytes)."""

    def __init__(self, body: str) -> None:
        self.body = body

    def _repr_html_(self) -> str:
        return self.body


def html(body: str, *, where: Any = None) -> None:
    """Show HTML made here (``core.render.grids``' tiles and colour bars): sent without Streamlit's text clean-up."""
    (where if where is not None else st).html(_AsIs(body))


# ---- findings (core.analysis.diagnose) ---------------------------------------------------------------------


def findings_panel(findings: Sequence[Any] | None, page: str) -> None:
    """The findings of this page with their "Why?" and a button to the view showing each (``ui.diagnosis``)."""
    from ui import diagnosis

    diagnosis.findings_panel(findings, page)


def probe_set_statistics(sel: Any, page: str) -> Any:
    """The run's probe-set sweep for ``page``, with its problems and findings shown; stops the page on failure."""
    from core.run.runs import RunError

    try:
        res = cache.swept(sel.run, sel.stamp, sel.trust, label="Statistics of the probe set")
    except RunError as e:
        st.error(f"The statistics could not be computed: {e}")
        st.stop()
    sweep_problems(res, sel.run)
    page_findings(sel, page, compute=True)
    return res


def sweep_problems(result: Any, run: Any) -> None:
    """Warn about checkpoints a sweep could not use (unreadable, foreign, mismatched); listing problems are in the sidebar."""
    for p in dict.fromkeys(result.problems):
        if p not in run.problems:
            st.warning(p)


def page_findings(sel: Any, page: str, *, compute: bool = False) -> None:
    """The findings of this page; ``compute`` allows running the probe-set sweep.

    Without ``compute`` (pages that do not need the sweep) findings show only once the
    sweep is already done in this process.
    """
    if sel is None:
        return
    try:
        pk = cache.probe_key(sel.run)
        if not compute and not cache.is_swept(sel.path, sel.stamp, pk, sel.trust, "probes"):
            return
        res = cache.swept(sel.run, sel.stamp, sel.trust, label="Statistics for the findings")
        if page == "overview":  # the other pages show their sweep's problems themselves
            sweep_problems(res, sel.run)
        found = cache.findings(sel.path, sel.stamp, pk, cache.dir_stamp(sel.run.path), cache.arch_mtime(sel.run),
                               sel.trust)
    except Exception as e:  # findings are an extra: never break the page
        st.caption(f"Findings unavailable ({type(e).__name__}: {e})")
        return
    findings_panel(found, page)
