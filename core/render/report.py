"""Self-contained HTML report of a run (config, findings, charts as inline SVG), optionally compared with other runs."""
from __future__ import annotations

import datetime as _dt
import html
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import altair as alt
import numpy as np
import pandas as pd

from core.analysis import compare as C
from core.render import charts as CH
from core.render import compare_charts as CC

SEVERITY_COLOURS = {"problem": "#c0392b", "warning": "#d68910", "info": "#2e86c1"}
MAX_HEATMAP_LAYERS = 60


@dataclass(frozen=True)
class RunReport:
    """Everything the report shows of one run: manifest, history, sweep result, findings (most severe first)."""

    name: str
    manifest: Any
    history: pd.DataFrame
    result: Any
    findings: tuple = ()
    problems: tuple[str, ...] = ()
    scale: pd.DataFrame | None = None  # core.analysis.diagnose.scale_table
    filmstrip: Any = None  # core.analysis.trajectory.Filmstrip of the layer that changed most


def collect(run, result, filmstrip: Any = None) -> RunReport:
    """Gather one run's report data: its history, the findings of ``core.analysis.diagnose`` and the ranked
    scale-change table (``filmstrip``: a ``core.analysis.trajectory.Filmstrip`` to show, optional)."""
    from core.analysis import diagnose as D

    hist = run.history()
    th = D.thresholds_for(run)
    found = tuple(D.diagnose(result, hist, run.manifest, th))
    return RunReport(run.name, run.manifest, hist, result, found,
                     tuple(dict.fromkeys([*run.problems, *result.problems])), D.scale_table(result, hist, run.manifest, th),
                     filmstrip)


# ---------------------------------------------------------------------------------------------------
# charts -> inline SVG


def svg(chart: alt.TopLevelMixin, prefix: str) -> str:
    """The chart as an SVG string (vl-convert, no browser) with its element ids prefixed by ``prefix``.

    Several SVGs inline in one page would otherwise share ids (gradients, clip paths)
    and reference each other's definitions.
    """
    import vl_convert as vlc

    s = vlc.vegalite_to_svg(chart.to_json())
    s = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', s)
    s = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m.group(1)})", s)
    s = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}-{m.group(1)}"', s)
    return s


def std_heatmap(layers: pd.DataFrame, order: Sequence[str] = (), width: int = 520) -> alt.Chart:
    """Layers (depth order, input at the top) x checkpoints heat map of the layer std (mean over probes), log colour.

    layers: a sweep's ``layers`` table. Zero or non-finite std is drawn grey.
    """
    if layers is None or layers.empty:
        return CH.placeholder("No layer statistics.")
    d = layers.assign(layer=layers["layer"].astype(str)).groupby(["layer", "mini_epoch"], observed=True).agg(
        std=("std", "mean"), depth=("depth", "first")).reset_index()
    names = list(dict.fromkeys(d.sort_values("depth")["layer"]))
    if order:
        names = [n for n in order if n in set(names)] or names
    if len(names) > MAX_HEATMAP_LAYERS:  # keep the chart readable: every k-th layer
        names = names[::math.ceil(len(names) / MAX_HEATMAP_LAYERS)]
        d = d[d["layer"].isin(names)]
    h = max(140, min(900, 14 * len(names)))
    base = alt.Chart(d).encode(
        x=alt.X("mini_epoch:O", title="mini-epoch"), y=alt.Y("layer:N", sort=names, title=None),
        tooltip=[alt.Tooltip("layer:N"), alt.Tooltip("mini_epoch:O", title="mini-epoch"),
                 alt.Tooltip("std:Q", format=".4g")])
    good = base.transform_filter("isValid(datum.std) && isFinite(datum.std) && datum.std > 0").mark_rect().encode(
        color=alt.Color("std:Q", scale=alt.Scale(type="log", scheme="viridis"), title="std"))
    bad = base.transform_filter("!(isValid(datum.std) && isFinite(datum.std) && datum.std > 0)").mark_rect(
        color="#d0d0d0")
    return alt.layer(bad, good).properties(width=width, height=h)


def dead_heatmap(dead: pd.DataFrame, order: Sequence[str] = (), width: int = 520) -> alt.Chart:
    """Layers x checkpoints heat map of the dead-channel fraction (``core.analysis.compare.dead_fractions`` of one run)."""
    if dead is None or dead.empty:
        return CH.placeholder("No channel statistics.")
    d = dead[dead.groupby("layer")["n_dead"].transform("max") > 0]
    if d.empty:
        return CH.placeholder("No dead channel (exactly zero on every probe image) in any layer.", width=width)
    names = [n for n in order if n in set(d["layer"])] or sorted(set(d["layer"]))
    return alt.Chart(d).mark_rect().encode(
        x=alt.X("mini_epoch:O", title="mini-epoch"), y=alt.Y("layer:N", sort=names, title=None),
        color=alt.Color("frac_dead:Q", scale=alt.Scale(scheme="reds", domain=[0, 1]), title="dead",
                        legend=alt.Legend(format="%")),
        tooltip=[alt.Tooltip("layer:N"), alt.Tooltip("mini_epoch:O", title="mini-epoch"),
                 alt.Tooltip("n_dead:Q", title="dead channels"), alt.Tooltip("n_channels:Q", title="channels"),
                 alt.Tooltip("frac_dead:Q", format=".0%")],
    ).properties(width=width, height=max(60, min(700, 16 * len(names))))


def gate_hist_panels(gate_hist: pd.DataFrame, blocks: Sequence[str], width: int = 220) -> alt.Chart:
    """One gate-histogram evolution panel (bins x checkpoints) per SE block, side by side."""
    if gate_hist is None or gate_hist.empty:
        return CH.placeholder("No SE gate histograms.")
    g = gate_hist[gate_hist["kind"].astype(str) == "gate"].assign(block=lambda d: d["block"].astype(str))
    panels = [CH.hist_evolution(g[g["block"] == b], title=b, width=width) for b in blocks if (g["block"] == b).any()]
    if not panels:
        return CH.placeholder("No SE gate histograms.")
    rows = [alt.hconcat(*panels[i:i + 3]) for i in range(0, len(panels), 3)]
    return rows[0] if len(rows) == 1 else alt.vconcat(*rows)


def compare_std_chart(results: Sequence, layers: Sequence[str], runs: Sequence[str]) -> alt.Chart:
    """Std of each of ``layers`` over checkpoints, one panel per layer, one line per run (log y)."""
    if not layers:
        return CH.placeholder("No shared layer to compare.")
    ls = C.layer_series(results, layers, stats=("std",))
    ls = ls[ls["std"] > 0]
    if ls.empty:
        return CH.placeholder("No positive std on the layers compared.")
    return alt.Chart(ls).mark_line(point=alt.OverlayMarkDef(size=16)).encode(
        x=CH.x_encoding("mini_epoch"), y=alt.Y("std:Q", scale=alt.Scale(type="log"), title="std"),
        color=CC.run_color(runs),
        tooltip=["run:N", "layer:N", "mini_epoch:Q", alt.Tooltip("std:Q", format=".4g")],
    ).properties(width=240, height=150).facet(facet=alt.Facet("layer:N", sort=list(layers), title=None), columns=3)


# ---------------------------------------------------------------------------------------------------
# HTML


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px}
h1{margin-bottom:0}h2{border-bottom:2px solid #eee;padding-bottom:4px;margin-top:36px}
.sub{color:#666;margin-top:4px}.small{font-size:13px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f6f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.sev{color:#fff;border-radius:3px;padding:1px 6px;font-size:12px;font-weight:600}
figure{margin:12px 0 24px 0;overflow-x:auto}figcaption{color:#555;font-size:13px;margin-bottom:6px}
.note{background:#fff8e1;border-left:4px solid #f0c36d;padding:6px 10px;font-size:14px}
.ok{background:#eef8ee;border-left:4px solid #6c6;padding:6px 10px;font-size:14px}
code{background:#f3f3f3;padding:0 3px}
"""


def _e(v: Any) -> str:
    return html.escape(str(v))


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "—" if not math.isfinite(v) else f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return str(v)


def kv_table(d: Mapping[str, Any]) -> str:
    """A two-column HTML table of ``d`` (nested dicts flattened as ``a.b``)."""
    rows = []

    def walk(prefix: str, o: Any) -> None:
        if isinstance(o, Mapping) and o:
            for k, v in o.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            rows.append(f"<tr><th>{_e(prefix)}</th><td>{_e(_fmt(o))}</td></tr>")

    walk("", d)
    return "<table>" + "".join(rows) + "</table>" if rows else "<p>(none)</p>"


def frame_table(df: pd.DataFrame, table_id: str = "") -> str:
    """A DataFrame as an HTML table (numbers right-aligned, 4 significant digits)."""
    head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            num = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            cells.append(f"<td class=\"num\">{_e(_fmt(v))}</td>" if num else f"<td>{_e(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    idattr = f' id="{_e(table_id)}"' if table_id else ""
    return f"<table{idattr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def findings_html(rep: RunReport) -> str:
    """The findings table of one run (most severe first), or why there is none."""
    if not rep.findings:
        return "<p class=\"ok\">No findings: no rule fired on this run.</p>"
    rows = []
    for f in rep.findings:
        sev = str(getattr(f, "severity", "info"))
        colour = SEVERITY_COLOURS.get(sev, "#777")
        ev = getattr(f, "evidence", {}) or {}
        evs = "; ".join(f"{k}={_fmt(v)}" for k, v in list(dict(ev).items())[:8])
        layers = list(getattr(f, "layers", ()) or ())
        lay = ", ".join(layers[:6]) + (f" (+{len(layers) - 6})" if len(layers) > 6 else "")
        rows.append(f"<tr class=\"finding sev-{_e(sev)}\"><td><span class=\"sev\" style=\"background:{colour}\">"
                    f"{_e(sev)}</span></td><td>{_e(getattr(f, 'kind', ''))}</td>"
                    f"<td class=\"num\">{_e(getattr(f, 'mini_epoch', ''))}</td><td>{_e(lay)}</td>"
                    f"<td>{_e(getattr(f, 'message', ''))}<br><small>{_e(evs)}</small>{_advice_html(f)}</td></tr>")
    counts = {}
    for f in rep.findings:
        counts[f.severity] = counts.get(f.severity, 0) + 1
    head = ", ".join(f"{n} {s}" for s, n in counts.items())
    return (f"<p>{len(rep.findings)} finding{'s' if len(rep.findings) != 1 else ''}: {_e(head)}.</p>"
            "<table class=\"findings\"><thead><tr><th>severity</th><th>kind</th><th>from mini-epoch</th>"
            "<th>layers</th><th>finding</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _advice_html(f: Any) -> str:
    a = getattr(f, "advice", None)
    if a is None:
        return ""
    seen = f"<br><b>In this run:</b> {_e(a.observed)}" if a.observed else ""
    return (f"<details><summary>Why?</summary><b>Usually caused by</b> {_e(a.causes)}.<br><b>Try</b> "
            f"{_e(a.remedy)}.{seen}</details>")


def scale_html(rep: RunReport, top: int = 12) -> str:
    """The ranked scale-change table (largest change first; the Overview's table)."""
    t = rep.scale
    if t is None or t.empty:
        return "<p class=\"note\">Not enough judged checkpoints to compare activation scales.</p>"
    t = t.head(top)
    shown = pd.DataFrame({
        "layer": t["layer"], "kind": t["kind"],
        "change": [f"{c:.1f}x {'smaller' if d == 'shrink' else 'larger'}" for c, d in zip(t["change"], t["direction"])],
        "onset": ["—" if o < 0 else str(int(o)) for o in t["onset"]], "baseline mini-epoch": t["baseline_mini_epoch"],
        "std baseline": t["std_baseline"], "std last": t["std_last"], "std min": t["std_min"],
        "min at": t["min_mini_epoch"]})
    return (frame_table(shown, "scale-changes") + "<p class=\"sub small\">Layer std (median over the probe images) "
            "against its baseline, the first checkpoint the diagnostics judge (mini-epoch 0 only without BatchNorm: "
            "before the moving statistics warm up, deep layers look tiny in every run). Onset: first mini-epoch at "
            "10x; layers crossing at the same mini-epoch are listed together, shallowest first.</p>")


def filmstrip_html(rep: RunReport) -> str:
    """The filmstrip of the layer that changed most, as an inline PNG (one tile per checkpoint, fixed scale)."""
    from core.render.grids import data_uri, to_png
    from core.render.trajectory import filmstrip_image

    fs = rep.filmstrip
    if fs is None:
        return ""
    img = filmstrip_image(fs.maps, fs.lo, fs.hi, [f"me {m}" for m in fs.mini_epochs])
    what = "mean map" if fs.channel is None else f"channel {fs.channel}"
    return (f"<figure id=\"filmstrip\"><figcaption>Filmstrip: {_e(fs.tap)} ({what}) for the first probe image at "
            f"every checkpoint, one fixed colour scale {fs.lo:.3g} .. {fs.hi:.3g} (viridis): shrinking fades.</figcaption>"
            f"<img alt=\"filmstrip of {_e(fs.tap)}\" src=\"{data_uri(to_png(img))}\"></figure>")


def _quiet(build, *args, **kw):
    """Build a chart without Altair's "deduplicated selection parameter" notice (harmless, but printed by the CLI)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Automatically deduplicated selection parameter")
        return build(*args, **kw)


class _Figures:
    """Numbers SVG prefixes so that ids stay unique across the page."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, fig_id: str, chart: alt.TopLevelMixin, caption: str) -> str:
        self.n += 1
        try:
            body = svg(chart, f"f{self.n}")
        except Exception as e:  # one chart failing must not lose the report
            body = f"<p class=\"note\">Chart could not be drawn ({_e(type(e).__name__)}: {_e(e)})</p>"
        return f"<figure id=\"{_e(fig_id)}\" class=\"chart\"><figcaption>{_e(caption)}</figcaption>{body}</figure>"


def _scaling_words(preprocessing: Any) -> str:
    """The run's pixel scaling for people; a guess says so."""
    from core.run.preprocess import PreprocessSpec

    try:
        return PreprocessSpec.from_dict(preprocessing).describe()
    except ValueError:
        return f"{preprocessing} (not valid)"


def config_html(rep: RunReport) -> str:
    m = rep.manifest
    facts = {"name": m.name, "created": m.created, "input": f"{m.input_height}×{m.input_width}×{m.input_channels}",
             "pixel scaling": _scaling_words(m.preprocessing), "classes": len(m.class_names),
             "mini-epoch size (images)": m.mini_epoch_images, "checkpoints swept": len(rep.result.mini_epochs),
             "probe images": len(rep.result.probe_ids), "SE blocks found": ", ".join(rep.result.se_blocks) or "none",
             "versions": m.versions}
    h = rep.history
    if h is not None and len(h):
        last = h.iloc[-1]
        facts["last mini-epoch"] = {k: last[k] for k in ("mini_epoch", "images_seen", "loss", "accuracy",
                                                         "val_loss", "val_accuracy", "lr") if k in last}
    return (f"<h3>Run</h3>{kv_table(facts)}<h3>Training</h3>{kv_table(m.training)}"
            f"<h3>Data set</h3>{kv_table(m.dataset)}")


def run_section(rep: RunReport, fig: _Figures) -> str:
    r = rep.result
    parts = [f"<section id=\"config\"><h2>Configuration</h2>{config_html(rep)}</section>",
             f"<section id=\"findings\"><h2>Findings</h2>{findings_html(rep)}</section>",
             f"<section id=\"scale\"><h2>Scale changes, largest first</h2>{scale_html(rep)}"
             f"{filmstrip_html(rep)}</section>",
             "<section id=\"charts\"><h2>Charts</h2>",
             fig("chart-loss", _quiet(CH.training_curves, rep.history),
                 "Training curves: loss, accuracy, learning rate."),
             fig("chart-std-heatmap", std_heatmap(r.layers, r.layer_order),
                 "Layer std (mean over the probe set), layers in depth order × checkpoints; log colour. "
                 "At mini-epoch 0 BatchNorm moving statistics are still initial, so deep layers look small."),
             fig("chart-std-ratio", CH.collapse_heatmap(CH.normalised_to_reference(r.layers)),
                 "Layer std divided by its value at mini-epoch 1: red shrinks, blue grows."),
             fig("chart-dead", dead_heatmap(C.dead_fractions([r]), r.layer_order),
                 "Fraction of each layer's channels that are exactly zero on every probe image (layers with any).")]
    if r.se_blocks:
        parts += [fig("chart-gate-saturation", CH.gate_fractions(r.gates),
                      "SE gate saturation: fraction of gates off (< 0.05), open (> 0.95) and at 0.5 per block."),
                  fig("chart-gate-hist", gate_hist_panels(r.gate_hist, r.se_blocks),
                      "SE gate histograms over checkpoints (bins × mini-epochs, darker = more gates).")]
    else:
        parts.append("<p id=\"chart-gate-saturation\" class=\"note\">No SE block was found in this architecture: "
                     "no gate charts.</p>")
    if rep.problems:
        parts.append("<h3>Problems while reading the run</h3><ul>"
                     + "".join(f"<li>{_e(p)}</li>" for p in rep.problems) + "</ul>")
    parts.append("</section>")
    return "\n".join(parts)


def compare_section(reps: Sequence[RunReport], fig: _Figures, top: int = 20) -> str:
    """Overlays and the biggest-differences table of the runs (the first is the reference)."""
    results = [r.result for r in reps]
    names = [r.name for r in reps]
    hist = {r.name: r.history for r in reps}
    sizes = {r.name: r.manifest.mini_epoch_images for r in reps}
    match = C.shared_layers(results)
    diff = C.biggest_differences(results, top=top, histories=hist, sizes=sizes, match=match)
    std_layers = list(dict.fromkeys(diff[diff["statistic"] == "std"]["layer"]))[:6] if len(diff) else []
    if not std_layers and match.shared:
        std_layers = list(match.shared[:: max(1, len(match.shared) // 6)])[:6]
    parts = [f"<section id=\"compare\"><h2>Comparison: {' vs '.join(map(_e, names))}</h2>",
             f"<p class=\"{'ok' if match.same_architecture else 'note'}\" id=\"shared-layers\">"
             f"{_e(match.message())}</p>",
             fig("chart-compare-loss", CC.loss_overlay(C.stacked_history(hist), names),
                 "Training (solid) and validation (dashed) loss of each run."),
             fig("chart-compare-std", compare_std_chart(results, std_layers, names),
                 "Std of the layers where the runs differ most (log scale).")]
    if match.shared_blocks:
        gs = C.gate_saturation(results, match.shared_blocks)
        parts.append(fig("chart-compare-gates", CC.gate_saturation_chart(gs, names),
                         "SE gates off (solid) and open (dashed) per shared block."))
    parts.append("<h3>Where they differ most</h3>")
    if diff.empty:
        parts.append("<p id=\"biggest-differences\">No difference found on the shared layers.</p>")
    else:
        parts.append(frame_table(C.differences_display(diff.drop(columns=["images_seen"])), "biggest-differences"))
        parts.append("<p class=\"sub small\">One row per layer and statistic at the checkpoint (from mini-epoch 1) "
                     "where the runs differ most; score = log10 of the std ratio, or 2 × the difference of a "
                     "fraction.</p>")
    parts.append("</section>")
    return "\n".join(parts)


def report_html(main: RunReport, others: Sequence[RunReport] = (), created: str | None = None) -> str:
    """The whole report as one HTML string: no scripts, no external resources (charts are inline SVG)."""
    created = created or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    fig = _Figures()
    title = f"Activation dynamics report: {main.name}" + (
        f" vs {', '.join(o.name for o in others)}" if others else "")
    body = [f"<h1>{_e(title)}</h1><p class=\"sub\">Generated {_e(created)} by "
            "<code>python -m core report</code>; statistics over each run's probe set.</p>",
            "<nav><a href=\"#config\">configuration</a> · <a href=\"#findings\">findings</a> · "
            "<a href=\"#charts\">charts</a>" + (" · <a href=\"#compare\">comparison</a>" if others else "") + "</nav>",
            run_section(main, fig)]
    if others:
        body.append(compare_section([main, *others], fig))
        for o in others:
            body.append(f"<section id=\"findings-{_e(o.name)}\"><h2>Findings of {_e(o.name)}</h2>"
                        f"{findings_html(o)}</section>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


EXTERNAL_RE = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def external_references(text: str) -> list[str]:
    """``src``/``href`` attributes of ``text`` that point outside the file (http://, https://, //host)."""
    return [text[max(0, m.start() - 20):m.end() + 40] for m in EXTERNAL_RE.finditer(text)]
