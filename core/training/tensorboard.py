"""TensorBoard export of sweep tables (scalars and gate histograms) without the tensorboard package."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

# TensorBoard's plugin names and data classes (summary.proto): what its scalar and histogram
# dashboards look for. tf.summary.scalar/histogram live in the tensorboard package, which is
# not a dependency, so the summaries are written with tf.summary.write and this metadata.
SCALARS_PLUGIN = "scalars"
HISTOGRAMS_PLUGIN = "histograms"
_DATA_CLASS_SCALAR = 1
_DATA_CLASS_TENSOR = 2

LAYER_STATS = ("std", "mean_abs", "frac_dead_channels")
GATE_STATS = ("frac_low", "frac_high", "frac_half", "mean", "std")
WEIGHT_STATS = ("norm", "dist_from_init", "update_ratio")


def _metadata(plugin: str, data_class: int):
    from tensorflow.core.framework import summary_pb2

    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin), data_class=data_class)


def write_scalar(tag: str, value: float, step: int) -> None:
    """One scalar in TensorBoard's format, to the default ``tf.summary`` writer."""
    import tensorflow as tf

    tf.summary.write(tag, tf.constant(float(value), tf.float32), step=int(step),
                     metadata=_metadata(SCALARS_PLUGIN, _DATA_CLASS_SCALAR))


def write_histogram(tag: str, left: np.ndarray, right: np.ndarray, counts: np.ndarray, step: int) -> None:
    """A pre-binned histogram as TensorBoard stores it: float64 (k, 3) rows of (left, right, count)."""
    import tensorflow as tf

    buckets = np.stack([np.asarray(left, np.float64), np.asarray(right, np.float64),
                        np.asarray(counts, np.float64)], axis=1)
    tf.summary.write(tag, tf.constant(buckets, tf.float64), step=int(step),
                     metadata=_metadata(HISTOGRAMS_PLUGIN, _DATA_CLASS_TENSOR))


@dataclass(frozen=True)
class ExportSummary:
    """What ``export_tensorboard`` wrote: the log folder, tag count and value count per kind."""

    logdir: Path
    tags: int
    scalars: int
    histograms: int


def _tag(*parts: Any) -> str:
    # TensorBoard groups charts by the first path component; keep the rest readable.
    return "/".join(str(p).replace(" ", "_") for p in parts if p is not None and str(p) != "")


def _one_run(df: pd.DataFrame | None, run_name: str | None) -> pd.DataFrame:
    if df is None or len(df) == 0:
        return pd.DataFrame()
    if run_name is not None and "run" in df and (df["run"].astype(str) == run_name).any():
        df = df[df["run"].astype(str) == run_name]
    return df


def _probe_suffix(df: pd.DataFrame) -> Any:
    """A function giving ``probe<k>`` when several probe sets are present, else None."""
    many = "probe" in df and df["probe"].nunique() > 1
    return (lambda p: f"probe{int(p)}") if many else (lambda p: None)


def _per_probe_points(df: pd.DataFrame, stats: Iterable[str], prefix: str, key: str
                      ) -> Iterable[tuple[str, int, float]]:
    """(tag, step, value) of each finite ``stats`` column of a per-probe table (layers or gates)."""
    if not len(df):
        return
    suffix = _probe_suffix(df)
    for r in df.itertuples(index=False):
        for stat in stats:
            v = getattr(r, stat, math.nan)
            if v is not None and math.isfinite(float(v)):
                yield _tag(f"{prefix}_{stat}", getattr(r, key), suffix(getattr(r, "probe", 0))), int(r.mini_epoch), float(v)


def scalar_points(tables: Mapping[str, pd.DataFrame], run_name: str | None = None
                  ) -> Iterable[tuple[str, int, float]]:
    """(tag, step, value) for every finite statistic worth a TensorBoard scalar; pure."""
    for table, stats, prefix, key in (("layers", LAYER_STATS, "activation", "layer"),
                                      ("gates", GATE_STATS, "gate", "block")):
        yield from _per_probe_points(_one_run(tables.get(table), run_name), stats, prefix, key)
    weights = _one_run(tables.get("weights"), run_name)
    for r in weights.itertuples(index=False) if len(weights) else ():
        for stat in WEIGHT_STATS:
            v = getattr(r, stat, math.nan)
            if v is not None and math.isfinite(float(v)):
                yield _tag(f"weight_{stat}", r.layer, getattr(r, "variable", None)), int(r.mini_epoch), float(v)


def histogram_points(tables: Mapping[str, pd.DataFrame], run_name: str | None = None
                     ) -> Iterable[tuple[str, int, np.ndarray, np.ndarray, np.ndarray]]:
    """(tag, step, left, right, count) per block, kind and mini-epoch from the ``gate_hist`` table; pure."""
    gh = _one_run(tables.get("gate_hist"), run_name)
    if not len(gh):
        return
    keys = ["mini_epoch", "block"] + (["kind"] if "kind" in gh else [])
    for key, g in gh.groupby(keys, sort=True, observed=True):
        me, block, kind = (key + ("gate",))[:3] if isinstance(key, tuple) else (key, None, "gate")
        g = g.sort_values("bin_left")
        name = "gate_hist" if str(kind) == "gate" else f"gate_{kind}_hist"
        yield (_tag(name, block), int(me), g["bin_left"].to_numpy(), g["bin_right"].to_numpy(),
               g["count"].to_numpy())


def _weight_table_from_run(run) -> pd.DataFrame:
    """Per-variable norms straight from the checkpoints, for runs without a swept ``weights`` table."""
    rows = []
    for c in run.checkpoints():
        try:
            w = run.read_weights(c)
        except Exception:  # a damaged checkpoint leaves a gap, as in the app
            continue
        for path, a in w.items():
            if not np.issubdtype(np.asarray(a).dtype, np.floating) or "/" not in path:
                continue
            layer, var = path.rsplit("/", 1)
            a = np.asarray(a, np.float64)
            rows.append({"mini_epoch": c.mini_epoch, "layer": layer, "variable": var,
                         "norm": float(np.sqrt(np.sum(np.square(a[np.isfinite(a)]))))})
    return pd.DataFrame(rows)


def export_tensorboard(run, tables: Any, logdir: str | Path) -> ExportSummary:
    """Write activation, gate and weight statistics of one run as TensorBoard event files.

    ``tables``: a ``core.analysis.sweep.SweepResult`` or a mapping of table name to
    DataFrame (``layers``, ``gates``, ``gate_hist``, ``weights``; any may be
    missing). ``run`` (a ``core.run.runs.Run`` or None) selects that run's rows
    when tables hold several, and supplies weight norms from its checkpoints
    when there is no ``weights`` table. Step = mini-epoch. Scalars:
    ``activation_{std,mean_abs,frac_dead_channels}/<layer>``,
    ``gate_<stat>/<block>``, ``weight_{norm,dist_from_init,update_ratio}/<layer>/<variable>``;
    histograms: ``gate_hist/<block>`` (and ``gate_logits_hist/<block>``).
    """
    import tensorflow as tf

    tabs = dict(getattr(tables, "tables", tables) or {})
    run_name = getattr(run, "name", None)
    if (tabs.get("weights") is None or not len(tabs["weights"])) and run is not None:
        tabs["weights"] = _weight_table_from_run(run)
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    writer = tf.summary.create_file_writer(str(logdir))
    tags: set[str] = set()
    n_s = n_h = 0
    with writer.as_default():
        for tag, step, value in scalar_points(tabs, run_name):
            write_scalar(tag, value, step)
            tags.add(tag)
            n_s += 1
        for tag, step, left, right, count in histogram_points(tabs, run_name):
            write_histogram(tag, left, right, count, step)
            tags.add(tag)
            n_h += 1
    writer.flush()
    writer.close()
    return ExportSummary(logdir, len(tags), n_s, n_h)


def read_events(logdir: str | Path) -> pd.DataFrame:
    """Every summary value under ``logdir`` as rows (tag, step, plugin, value), without tensorboard.

    ``value`` is a float for scalars and a float64 (k, 3) array for histograms.
    """
    import tensorflow as tf

    rows, plugins = [], {}
    for f in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        for ev in tf.compat.v1.train.summary_iterator(str(f)):
            for v in ev.summary.value:
                arr = tf.make_ndarray(v.tensor) if v.HasField("tensor") else np.asarray(v.simple_value)
                # The writer may keep the metadata on a tag's first value only.
                plugin = plugins.setdefault(v.tag, v.metadata.plugin_data.plugin_name)
                rows.append({"tag": v.tag, "step": int(ev.step), "plugin": plugin,
                             "value": float(arr) if arr.ndim == 0 else arr})
    return pd.DataFrame(rows, columns=["tag", "step", "plugin", "value"])
