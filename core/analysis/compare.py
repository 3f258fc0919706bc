"""Compare runs: the layers they share, statistics aligned over checkpoints, and where they differ most."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from core.analysis.axes import X_FIELDS, x_map

#: Statistics compared by ``biggest_differences`` and how each is scored.
STATISTICS = {"std": "layer std (mean over probes)", "frac_dead": "dead-channel fraction",
              "frac_low": "SE gates < 0.05 (off)", "frac_high": "SE gates > 0.95 (open)"}
#: A difference of 0.5 in a fraction scores like a factor of 10 in std (log10 ratio 1).
FRACTION_WEIGHT = 2.0
#: Floor under std values before taking ratios (a dead layer's std of 0 must not give an infinite ratio).
STD_FLOOR = 1e-8


@dataclass(frozen=True)
class LayerMatch:
    """Which layers (taps) and SE blocks a set of runs share.

    ``shared`` follows the first run's depth order; ``only[i]`` lists the layers of
    ``runs[i]`` that not every other run has; ``widths_differ`` holds the shared layers
    whose channel counts differ, with the count of each run.
    """

    runs: tuple[str, ...]
    shared: tuple[str, ...]
    only: tuple[tuple[str, ...], ...]
    shared_blocks: tuple[str, ...]
    blocks_only: tuple[tuple[str, ...], ...]
    widths_differ: tuple[tuple[str, tuple[int, ...]], ...]
    same_architecture: bool

    def not_shared(self) -> dict[str, tuple[str, ...]]:
        """Run -> its layers that are not compared (empty tuples left out)."""
        return {r: o for r, o in zip(self.runs, self.only) if o}

    def message(self, limit: int = 8) -> str:
        """One paragraph for the page: what is compared and what is not."""
        if self.same_architecture:
            return (f"Same architecture: all {len(self.shared)} layers"
                    + (f" and {len(self.shared_blocks)} SE blocks" if self.shared_blocks else "")
                    + " are compared.")
        parts = [f"Different architectures: compared on the {len(self.shared)} layers they share"
                 + (f" and {len(self.shared_blocks)} shared SE blocks." if self.shared_blocks else ".")]
        for r, o in zip(self.runs, self.only):
            if o:
                shown = ", ".join(o[:limit]) + (f" and {len(o) - limit} more" if len(o) > limit else "")
                parts.append(f"Only in {r} (not compared): {shown}.")
        if self.widths_differ:
            bits = [f"{name} ({' vs '.join(map(str, w))})" for name, w in self.widths_differ[:limit]]
            more = f" and {len(self.widths_differ) - limit} more" if len(self.widths_differ) > limit else ""
            parts.append("Shared layers with different channel counts: " + ", ".join(bits) + more + ".")
        return " ".join(parts)


def channel_counts(result) -> dict[str, int]:
    """Layer -> number of channels, from the ``channels`` table of one sweep (first checkpoint, probe 0)."""
    ch = result.tables.get("channels")
    if ch is None or ch.empty:
        return {}
    first = ch[(ch["mini_epoch"] == ch["mini_epoch"].min()) & (ch["probe"] == ch["probe"].min())]
    g = first.groupby(first["layer"].astype(str), observed=True)["channel"].max() + 1
    return {str(k): int(v) for k, v in g.items()}


def _layers_of(result) -> list[str]:
    if result.layer_order:
        return [str(x) for x in result.layer_order]
    lt = result.tables.get("layers")
    if lt is None or lt.empty:
        return []
    d = lt.drop_duplicates("layer").sort_values("depth")
    return [str(x) for x in d["layer"]]


def shared_layers(results: Sequence) -> LayerMatch:
    """Layers and SE blocks every run has, and what each run has alone.

    Runs of the same architecture (same layers in the same order, same channel counts,
    same SE blocks) compare on every layer; otherwise on the layer names they share.
    """
    runs = tuple(str(r.run) for r in results)
    orders = [_layers_of(r) for r in results]
    blocks = [[str(b) for b in r.se_blocks] for r in results]
    if not results:
        return LayerMatch((), (), (), (), (), (), True)
    common = set(orders[0]).intersection(*map(set, orders[1:]))
    shared = tuple(n for n in orders[0] if n in common)
    cblocks = set(blocks[0]).intersection(*map(set, blocks[1:]))
    counts = [channel_counts(r) for r in results]
    differ = []
    for n in shared:
        w = tuple(c.get(n, -1) for c in counts)
        if len(set(w)) > 1:
            differ.append((n, w))
    same = all(o == orders[0] for o in orders) and all(b == blocks[0] for b in blocks) and not differ
    return LayerMatch(runs=runs, shared=shared, only=tuple(tuple(n for n in o if n not in common) for o in orders),
                      shared_blocks=tuple(b for b in blocks[0] if b in cblocks),
                      blocks_only=tuple(tuple(b for b in bl if b not in cblocks) for bl in blocks),
                      widths_differ=tuple(differ), same_architecture=same)


# ---------------------------------------------------------------------------------------------------
# aligned tables (one row per run x mini-epoch x ...)


def x_maps(results: Sequence, histories: Mapping[str, pd.DataFrame] | None = None,
           sizes: Mapping[str, int] | None = None) -> dict[str, pd.DataFrame]:
    """Run -> frame (mini_epoch, images_seen) for its swept mini-epochs (history first, else mini_epoch x size)."""
    histories, sizes = histories or {}, sizes or {}
    return {str(r.run): x_map(histories.get(str(r.run)), r.mini_epochs, int(sizes.get(str(r.run), 0) or 0))
            for r in results}


def add_images_seen(df: pd.DataFrame, maps: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """``df`` (columns run, mini_epoch) plus images_seen looked up in each run's own map."""
    if df.empty:
        return df.assign(images_seen=pd.Series(dtype="float64"))
    parts = [m.assign(run=r) for r, m in maps.items()]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["run", "mini_epoch",
                                                                                   "images_seen"])
    out = df.drop(columns=["images_seen"], errors="ignore").merge(
        table[["run", "mini_epoch", "images_seen"]], on=["run", "mini_epoch"], how="left")
    return out


def _str_cols(df: pd.DataFrame, cols: Sequence[str]) -> pd.DataFrame:
    out = df.copy()
    for c in cols:
        if c in out:
            out[c] = out[c].astype(str)
    return out


def layer_series(results: Sequence, layers: Sequence[str] | None = None,
                 stats: Sequence[str] = ("std", "mean", "min", "max")) -> pd.DataFrame:
    """Per run, mini-epoch and layer: each of ``stats`` as the mean over the run's probes.

    Returns run, mini_epoch, layer, depth, *stats (rows only for ``layers`` when given).
    """
    parts = []
    for r in results:
        lt = r.tables.get("layers")
        if lt is None or lt.empty:
            continue
        d = _str_cols(lt, ["layer"])
        if layers is not None:
            d = d[d["layer"].isin(set(layers))]
        g = d.groupby(["mini_epoch", "layer"], observed=True).agg(
            depth=("depth", "first"), **{s: (s, "mean") for s in stats}).reset_index()
        g.insert(0, "run", str(r.run))
        parts.append(g)
    cols = ["run", "mini_epoch", "layer", "depth", *stats]
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True)[cols]
    out["mini_epoch"] = out["mini_epoch"].astype("int64")
    return out


def dead_fractions(results: Sequence, layers: Sequence[str] | None = None) -> pd.DataFrame:
    """Per run, mini-epoch and layer: dead channels (:func:`core.analysis.stats.dead_channels`: the channel's
    maximum is <= 0 on every probe image, i.e. a ReLU output that is zero everywhere).

    Returns run, mini_epoch, layer, n_channels, n_dead, frac_dead.
    """
    from core.analysis.stats import dead_channels

    cols = ["run", "mini_epoch", "layer", "n_channels", "n_dead", "frac_dead"]
    parts = []
    for r in results:
        ch = r.tables.get("channels")
        if ch is None or ch.empty:
            continue
        d = _str_cols(ch[["mini_epoch", "probe", "layer", "channel", "max"]], ["layer"])
        if layers is not None:
            d = d[d["layer"].isin(set(layers))]
        if d.empty:
            continue
        parts.append(dead_channels(d).assign(run=str(r.run)))
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True)
    out["layer"] = out["layer"].astype(str)
    out["mini_epoch"] = out["mini_epoch"].astype("int64")
    return out[cols]


def gate_saturation(results: Sequence, blocks: Sequence[str] | None = None) -> pd.DataFrame:
    """Per run, mini-epoch and SE block: frac_low, frac_high (and frac_half, mean) as the mean over probes."""
    cols = ["run", "mini_epoch", "block", "frac_low", "frac_high", "frac_half", "mean"]
    parts = []
    for r in results:
        gt = r.tables.get("gates")
        if gt is None or gt.empty:
            continue
        d = _str_cols(gt, ["block"])
        if blocks is not None:
            d = d[d["block"].isin(set(blocks))]
        g = d.groupby(["mini_epoch", "block"], observed=True)[cols[3:]].mean().reset_index()
        g.insert(0, "run", str(r.run))
        parts.append(g)
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True)[cols]
    out["mini_epoch"] = out["mini_epoch"].astype("int64")
    return out


def stacked_history(histories: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The runs' history tables stacked with a ``run`` column (mini-epoch 0 has no history row)."""
    parts = [h.assign(run=r) for r, h in histories.items() if h is not None and len(h)]
    if not parts:
        return pd.DataFrame(columns=["run", "mini_epoch", "images_seen", "loss", "val_loss"])
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------------------------------------------
# where the runs differ most


def _long_stats(results: Sequence, match: LayerMatch) -> pd.DataFrame:
    """run, mini_epoch, layer, statistic, value for every compared statistic on shared layers/blocks."""
    parts = []
    ls = layer_series(results, match.shared, stats=("std",))
    if len(ls):
        parts.append(ls.assign(statistic="std", value=ls["std"])[["run", "mini_epoch", "layer", "statistic",
                                                                   "value"]])
    df = dead_fractions(results, match.shared)
    if len(df):
        parts.append(df.assign(statistic="frac_dead", value=df["frac_dead"])[
            ["run", "mini_epoch", "layer", "statistic", "value"]])
    gs = gate_saturation(results, match.shared_blocks)
    if len(gs):
        long = gs.melt(id_vars=["run", "mini_epoch", "block"], value_vars=["frac_low", "frac_high"],
                       var_name="statistic", value_name="value").rename(columns={"block": "layer"})
        parts.append(long)
    if not parts:
        return pd.DataFrame(columns=["run", "mini_epoch", "layer", "statistic", "value"])
    return pd.concat(parts, ignore_index=True)


def score_values(statistic: str, values: Sequence[float]) -> tuple[float, float, float]:
    """(score, ratio, difference) of one statistic's values across runs.

    std: ratio = max / min (each floored at STD_FLOOR), score = log10(ratio);
    fractions: difference = max - min, score = FRACTION_WEIGHT * difference, ratio NaN.
    Any non-finite value gives score NaN (not comparable).
    """
    v = np.asarray(values, np.float64)
    if not len(v) or not np.isfinite(v).all():
        return math.nan, math.nan, math.nan
    diff = float(v.max() - v.min())
    if statistic == "std":
        f = np.maximum(np.abs(v), STD_FLOOR)
        ratio = float(f.max() / f.min())
        return math.log10(ratio), ratio, diff
    return FRACTION_WEIGHT * diff, math.nan, diff


def biggest_differences(results: Sequence, top: int = 20, *, histories: Mapping[str, pd.DataFrame] | None = None,
                        sizes: Mapping[str, int] | None = None, align: str = "mini_epoch",
                        from_mini_epoch: int = 1, match: LayerMatch | None = None) -> pd.DataFrame:
    """Where the runs differ most: one row per (layer, statistic) at the checkpoint where it differs most.

    Statistics: layer std (log10 of max/min ratio), dead-channel fraction and SE gate
    saturation (frac_low, frac_high; difference x FRACTION_WEIGHT), on shared layers and
    blocks. Checkpoints are matched by ``align``: "mini_epoch" (same number) or
    "images_seen" (same number of images seen, from each run's history; mini-epoch sizes
    may differ). Checkpoints before ``from_mini_epoch`` (default: skip the untrained
    initialisation, where BatchNorm moving statistics are still initial) are ignored.

    Returns columns layer, statistic, mini_epoch (first run's), images_seen, one column
    per run with its value, ratio, difference, score; sorted by score, at most ``top`` rows,
    rows with a zero or undefined score left out.
    """
    if align not in X_FIELDS:
        raise ValueError(f"align must be one of {list(X_FIELDS)}")
    runs = [str(r.run) for r in results]
    cols = ["layer", "statistic", "mini_epoch", "images_seen", *runs, "ratio", "difference", "score"]
    if len(results) < 2:
        return pd.DataFrame(columns=cols)
    match = match or shared_layers(results)
    long = _long_stats(results, match)
    long = long[long["mini_epoch"] >= from_mini_epoch]
    maps = x_maps(results, histories, sizes)
    long = add_images_seen(long, maps)
    key = align
    if key == "images_seen":
        long = long[long["images_seen"].notna()]
    if long.empty:
        return pd.DataFrame(columns=cols)
    wide = long.pivot_table(index=["layer", "statistic", key], columns="run", values="value", aggfunc="first",
                            dropna=False)
    wide = wide.reindex(columns=runs).dropna(how="any").reset_index()
    wide.columns.name = None
    if wide.empty:
        return pd.DataFrame(columns=cols)
    scored = [score_values(s, vals) for s, vals in zip(wide["statistic"], wide[runs].to_numpy())]
    wide["score"], wide["ratio"], wide["difference"] = (np.array([s[i] for s in scored], np.float64)
                                                        for i in range(3))
    wide = wide[np.isfinite(wide["score"]) & (wide["score"] > 0)]
    if wide.empty:
        return pd.DataFrame(columns=cols)
    first = maps[runs[0]]
    if key == "mini_epoch":
        wide["images_seen"] = wide["mini_epoch"].map(first.set_index("mini_epoch")["images_seen"])
    else:
        wide["mini_epoch"] = wide["images_seen"].map(first.set_index("images_seen")["mini_epoch"])
    depth = {n: i for i, n in enumerate([*match.shared, *match.shared_blocks])}
    wide = wide.sort_values(["score", key], ascending=[False, True], kind="stable")
    best = wide.drop_duplicates(["layer", "statistic"], keep="first").copy()
    best["_depth"] = best["layer"].map(depth).fillna(1e9)
    best = best.sort_values(["score", "_depth"], ascending=[False, True], kind="stable").head(top)
    best["mini_epoch"] = best["mini_epoch"].astype("Int64")
    out = best[cols].reset_index(drop=True)
    out.columns.name = None
    return out


def match_checkpoints(maps: Mapping[str, pd.DataFrame], reference: str, mini_epoch: int,
                      align: str = "mini_epoch") -> dict[str, int | None]:
    """For each run, the mini-epoch that matches ``reference``'s ``mini_epoch``.

    "mini_epoch": the same number (None when the run lacks it); "images_seen": the run's
    checkpoint whose images seen is closest to the reference's (earlier one on a tie).
    """
    out: dict[str, int | None] = {}
    ref = maps[reference]
    if align == "images_seen":
        row = ref[ref["mini_epoch"] == mini_epoch]
        target = float(row["images_seen"].iloc[0]) if len(row) else math.nan
    for run, m in maps.items():
        mes = [int(v) for v in m["mini_epoch"]]
        if align == "mini_epoch" or not math.isfinite(target):
            out[run] = mini_epoch if mini_epoch in mes else None
            continue
        d = m.dropna(subset=["images_seen"])
        if d.empty:
            out[run] = None
            continue
        dist = (d["images_seen"] - target).abs().to_numpy()
        out[run] = int(d["mini_epoch"].to_numpy()[int(np.argmin(dist))])
    return out


# ---------------------------------------------------------------------------------------------------
# charts (colour = run, in the order the runs were picked)


def differences_display(diff: pd.DataFrame) -> pd.DataFrame:
    """The ``biggest_differences`` table with readable statistic names and rounded numbers (for tables)."""
    if diff.empty:
        return diff
    d = diff.copy()
    d["statistic"] = d["statistic"].map(lambda s: STATISTICS.get(s, s))
    return d


def shared_range(maps: Sequence[np.ndarray]) -> tuple[float, float] | None:
    """(min, max) over the finite values of several runs' channel maps: one colour scale for all grids."""
    lo, hi = math.inf, -math.inf
    for m in maps:
        f = np.asarray(m)[np.isfinite(m)]
        if f.size:
            lo, hi = min(lo, float(f.min())), max(hi, float(f.max()))
    return (lo, hi) if lo <= hi else None
