"""Small reusable Streamlit widgets: charts with PNG/SVG/CSV export, the findings panel, PNG images, HTML."""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from ui import cache

SEVERITY_BOX = {"problem": "error", "critical": "error", "error": "error", "warning": "warning"}
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


def chart_with_export(chart: Any, df: pd.DataFrame | None, key: str, *, where: Any = None,
                      stretch: bool = False) -> None:
    """Show an Altair chart with an Export popover: PNG, SVG (rendered only when clicked) and the table as CSV."""
    where = where if where is not None else st
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
    spec = cache.chart_spec(key, deps, build)
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
    """HTML that ``st.html`` takes as is: it dedents a plain string first (``textwrap``, ~9 ms per MB)."""

    def __init__(self, body: str) -> None:
        self.body = body

    def _repr_html_(self) -> str:
        return self.body


def html(body: str, *, where: Any = None) -> None:
    """Show HTML made here (``core.render.grids``' tiles and colour bars): sent without Streamlit's text clean-up."""
    (where if where is not None else st).html(_AsIs(body))


# ---- findings (core.analysis.diagnose, written separately) ---------------------------------------------------


def _get(f: Any, name: str, default: Any = None) -> Any:
    return f.get(name, default) if isinstance(f, dict) else getattr(f, name, default)


def findings_for_page(findings: Sequence[Any], page: str) -> list[Any]:
    """The findings to list on ``page``: all of them on the overview, else those whose ``page`` matches."""
    if page == "overview":
        return list(findings)
    return [f for f in findings if _get(f, "page") == page]


def _evidence(ev: Any) -> str:
    """Evidence as short text: numbers with 3 significant digits, missing values left out."""
    if isinstance(ev, str) or not isinstance(ev, dict):
        return str(ev)
    out = []
    for k, v in ev.items():
        if isinstance(v, float):
            if not np.isfinite(v):
                continue
            v = f"{v:.3g}"
        out.append(f"{k.replace('_', ' ')} {v}")
    return ", ".join(out)


def findings_panel(findings: Sequence[Any] | None, page: str) -> None:
    """FINDINGS SPOT: list ``core.analysis.diagnose`` findings for this page; renders nothing when there are none.

    One compact line per finding (severity badge, kind, first mini-epoch, message, evidence) and a
    button that opens the page, layer and checkpoint where it shows. Expanded on the overview,
    collapsed elsewhere so the page's own content stays in view.
    """
    from ui import state

    rows = findings_for_page(findings or [], page)
    if not rows:
        return
    sev = [str(_get(f, "severity", "info")).lower() for f in rows]
    counts = {k: sum(s in keys for s in sev) for k, keys in
              (("problem", ("problem", "critical", "error")), ("warning", ("warning",)))}
    summary = ", ".join(f"{n} {k}{'s' if n != 1 else ''}" for k, n in counts.items() if n)
    label = f"Findings for this {'run' if page == 'overview' else 'page'}: {len(rows)}" + (f" ({summary})" if summary else "")
    with st.expander(label, expanded=page == "overview", icon=":material/troubleshoot:"), \
            st.container(height=460 if len(rows) > 5 else "content", border=False):  # long lists scroll
        for i, f in enumerate(rows):
            badge = {"error": "red", "warning": "orange"}.get(SEVERITY_BOX.get(sev[i], "info"), "blue")
            kind = str(_get(f, "kind", "finding")).replace("_", " ")
            me = _get(f, "mini_epoch")
            when = f" · from mini-epoch {me}" if me is not None else ""
            target = _get(f, "page")
            c1, c2 = st.columns([8, 1], vertical_alignment="center")
            c1.markdown(f":{badge}-badge[{sev[i]}] **{kind}**{when} — {_get(f, 'message', '')}")
            ev = _get(f, "evidence")
            if ev:
                text = _evidence(ev)
                c1.caption(text if len(text) <= 220 else text[:217] + "…")
            if target in PAGE_TITLES:
                ck = _get(f, "checkpoint", me)
                lay = _get(f, "layer") or None
                c2.button("Show", key=f"finding_{page}_{i}", on_click=state.goto, args=(target,),
                          kwargs={"layer": lay, "ckpt": int(ck) if ck is not None else None},
                          help=f"Open {PAGE_TITLES[target]}" + (f" at layer {lay}" if lay else "")
                               + (f", mini-epoch {int(ck)}" if ck is not None else ""))


def probe_set_statistics(sel: Any, page: str) -> Any:
    """The run's probe-set sweep for ``page``, with its problems and findings shown; stops the page on failure."""
    from core.run.runs import RunError

    try:
        res = cache.swept(sel.run, sel.stamp, sel.trust, label="Statistics of the probe set")
    except RunError as e:
        st.error(f"The statistics could not be computed: {e}")
        st.stop()
    sweep_problems(res, sel.run)
    page_findings(sel, page, compute=True)  # FINDINGS SPOT
    return res


def sweep_problems(result: Any, run: Any) -> None:
    """Warn about checkpoints a sweep could not use (unreadable, foreign, mismatched); listing problems are in the sidebar."""
    for p in dict.fromkeys(result.problems):
        if p not in run.problems:
            st.warning(p)


def page_findings(sel: Any, page: str, *, compute: bool = False) -> None:
    """Findings for this page when ``core.analysis.diagnose`` exists; ``compute`` allows running the probe-set sweep.

    Without ``compute`` (pages that do not need the sweep) findings show only once the
    sweep is already done in this process.
    """
    if sel is None or not cache.diagnose_available():
        return
    try:
        pk = cache._probe_key(sel.run)
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
