"""One checkpoint's sweep tables: activation statistics, SE gates, BatchNorm batch statistics, extras, weights.

``_Tables`` turns one forward pass into numpy ``Columns`` per table; ``_WeightChain`` the weight
tables (it keeps the first and the previous checkpoint's weights). The orchestration, caching
and the result live in ``core.analysis.sweep``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from core.analysis import stats as S
from core.analysis import weightstats as W
from core.analysis.sweepcache import TABLES, WEIGHT_TABLES, Columns, rows_to_columns  # noqa: F401
from core.engine.engine import ProbeSet, RunEngine
from core.engine.reductions import Reduced
from core.run.runs import Checkpoint

#: Fixed logit bins (clipped into the end bins) so histograms line up across checkpoints.
LOGIT_BINS = np.linspace(-12.0, 12.0, 49)
@dataclass(frozen=True)
class SweepOptions:
    """What a sweep computes beyond per-tap statistics (each costs about one more pass)."""

    train_mode: bool = True  # probe-set loss/accuracy with BatchNorm in training mode
    gradients: bool = True  # per-layer gradient norms on the labelled probes
    weights: bool = True  # weight norms, update ratios, BatchNorm parameters


#: Probe images per forward pass: the sweep's activation memory is bounded by this many images, not the
#: probe set (BatchNorm in training mode and gradient norms use batches of this size; see ``_Tables``).
PROBE_BATCH = 64


def _bn_inputs(engine: RunEngine) -> dict[str, str]:
    """BatchNorm layer (variable path prefix) -> name of the tap that feeds it (when that tap is extracted)."""
    return engine.bn_inputs()


def output_tap(engine: RunEngine) -> str | None:
    """Tap holding the model's (probability) output, if extracted."""
    return engine.output_tap()


def _loss_acc(p: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of probabilities p (N, K) for labels y (N,); NaN without labels."""
    ok = y >= 0
    if not ok.any() or p.ndim != 2 or y[ok].max() >= p.shape[1]:
        return math.nan, math.nan
    p, y = p[ok].astype(np.float64), y[ok]
    with np.errstate(all="ignore"):
        loss = float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)).mean())
    acc = float((p.argmax(axis=1) == y).mean()) if np.isfinite(p).all() else math.nan
    return loss, acc


def to_moments(red: Reduced) -> S.Moments:
    """``Extractor.run_reduced`` output -> stacked ``core.analysis.stats.Moments`` (N, ΣC), writable float64/int64.

    The graph reduces finite tensors only: every position counts, no NaN/Inf.
    """
    widths = np.diff(red.offsets)
    total = np.repeat(red.totals, widths)
    n = red.arrays["s"].shape[0]
    f64 = lambda k: red.arrays[k].astype(np.float64)  # noqa: E731
    zeros = np.zeros((n, len(total)), np.int64)
    return S.Moments(count=np.tile(total, (n, 1)), total=total, s=f64("s"), m2=f64("m2"), abs_sum=f64("abs_sum"),
                     min=f64("min"), max=f64("max"), n_zero=np.rint(np.nan_to_num(red.arrays["n_zero"])).astype(np.int64),
                     n_nan=zeros, n_inf=zeros.copy())


def _columns(m: S.Moments, cols: slice) -> S.Moments:
    """The channels ``cols`` of stacked moments (one tap's block)."""
    total = m.total[cols] if isinstance(m.total, np.ndarray) else m.total
    return S.Moments(total=total, **{f: getattr(m, f)[:, cols] for f in S.MOMENT_ARRAYS})


def _put_columns(m: S.Moments, cols: slice, part: S.Moments) -> None:
    """Overwrite one tap's block of stacked moments with ``part`` (N, C)."""
    for f in S.MOMENT_ARRAYS:
        getattr(m, f)[:, cols] = getattr(part, f)


def raw_taps(engine: RunEngine, out_tap: str | None) -> list[str]:
    """Taps whose raw values the tables need: SE gates and logits, and the model output."""
    names = [t for b in engine.se_blocks for t in (b.gate, b.logits_tap)]
    return names + ([out_tap] if out_tap else [])


class _Tables:
    """Builds one checkpoint's activation tables (numpy ``Columns``) for a fixed engine, probe set and options.

    Everything that does not depend on the checkpoint (row labels, the preprocessed
    probe batch, which BatchNorm reads which tap, the categories of name columns) is
    computed once per sweep.
    """

    def __init__(self, engine: RunEngine, probes: ProbeSet, options: SweepOptions):
        self.engine, self.probes, self.options = engine, probes, options
        self.run = engine.run.name
        self.taps = list(engine.taps)
        kinds = engine.tap_kinds()
        self.kinds = [kinds.get(t, "other") for t in self.taps]
        self.kind_names = sorted(set(self.kinds))
        self.bn_inputs = _bn_inputs(engine)
        self.out_tap = output_tap(engine)
        self.raw = tuple(raw_taps(engine, self.out_tap))
        self.x = engine.preprocess(probes.images)
        self.labelled = bool((probes.labels >= 0).any())
        self.blocks = [b.name for b in engine.se_blocks]
        self._rows: dict[tuple, dict[str, np.ndarray]] = {}

    def categories(self) -> dict[str, dict[str, list[str]]]:
        """Name columns stored as codes, per table (see ``core.analysis.sweepcache``)."""
        run = {"run": [self.run]}
        return {"channels": {**run, "layer": self.taps}, "layers": {**run, "layer": self.taps, "kind": self.kind_names},
                "gates": {**run, "block": self.blocks}, "gate_channels": {**run, "block": self.blocks},
                "gate_hist": {**run, "block": self.blocks, "kind": ["gate", "logits"]}}

    def forward(self, wv) -> tuple[Reduced, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """One reduced forward pass -> (statistics, raw taps for the tables, raw values of taps with NaN/Inf).

        Taps whose in-graph sums are not finite get their raw values from a second,
        plain forward pass; ``moments`` then computes them in numpy, masking NaN/Inf.
        """
        ex = self.engine.extractor
        parts = [ex.run_reduced(wv, self.x[b], raw=self.raw) for b in self.batches()]
        red = parts[0][0] if len(parts) == 1 else dataclasses.replace(
            parts[0][0], arrays={k: np.concatenate([p[0].arrays[k] for p in parts]) for k in parts[0][0].arrays})
        acts = {t: np.concatenate([p[1][t] for p in parts]) for t in parts[0][1]}
        bad_cols = ~np.isfinite(red.arrays["s"]).all(axis=0)
        if not bad_cols.any():
            return red, acts, {}
        bad = [t for i, t in enumerate(red.taps) if bad_cols[red.offsets[i]:red.offsets[i + 1]].any()]
        redo = [ex.run(wv, self.x[b]) for b in self.batches()]
        return red, acts, {t: np.concatenate([r[t] for r in redo]) for t in bad}

    def batches(self) -> list[slice]:
        """The probe set in forward passes of at most ``PROBE_BATCH`` images (memory flat in the probe count)."""
        n = len(self.x)
        return [slice(i, min(n, i + PROBE_BATCH)) for i in range(0, max(n, 1), PROBE_BATCH)]

    @staticmethod
    def moments(red: Reduced, redo: Mapping[str, np.ndarray]) -> S.Moments:
        """Stacked moments (N, ΣC) of a ``forward`` result (numpy work: runs in the sweep's worker)."""
        m = to_moments(red)
        for t, raw in redo.items():
            _put_columns(m, red.columns(t), S.moments(raw))
        return m

    def _labels(self, offsets: np.ndarray) -> dict[str, np.ndarray]:
        """Row labels of the channel and layer tables, cached per layout (they do not change between checkpoints).

        Channel rows follow the stacked (N, ΣC) statistics: probe by probe, taps in graph
        order, channels in order; layer rows go tap by tap, then probe.
        """
        n = len(self.probes)
        key = (n, tuple(offsets.tolist()))
        if key not in self._rows:
            widths = np.diff(offsets)
            tap_of_col = np.repeat(np.arange(len(widths), dtype=np.int32), widths)
            chan_of_col = (np.arange(int(offsets[-1])) - offsets[tap_of_col]).astype(np.int32)
            l_layer = np.repeat(np.arange(len(widths), dtype=np.int32), n)
            kind_code = np.array([self.kind_names.index(k) for k in self.kinds], np.int32)
            self._rows[key] = {"layer": np.tile(tap_of_col, n), "channel": np.tile(chan_of_col, n),
                               "probe": np.repeat(np.arange(n, dtype=np.int32), int(offsets[-1])),
                               "l_layer": l_layer, "l_probe": np.tile(np.arange(n, dtype=np.int32), len(widths)),
                               "l_kind": kind_code[l_layer]}
        return self._rows[key]

    def tables(self, me: int, m: S.Moments, red: Reduced, acts: Mapping[str, np.ndarray],
               weights: Mapping[str, np.ndarray], wv) -> dict[str, Columns]:
        """Every activation table of one checkpoint; ``m`` stacked moments (N, ΣC), ``acts`` raw taps."""
        out = self._stat_tables(me, m, red)
        out.update(self._gate_tables(me, acts))
        out["bn_batch"] = self._bn_batch(me, m, red, weights)
        out["extras"], out["grads"] = self._extras_grads(me, acts, weights, wv)
        return out

    def _stat_tables(self, me: int, m: S.Moments, red: Reduced) -> dict[str, Columns]:
        rows = self._labels(red.offsets)
        ch = S.channel_stats_from_moments(m)
        n_rows = len(rows["layer"])
        cols = {"run": np.zeros(n_rows, np.int32), "mini_epoch": np.full(n_rows, me, np.int32),
                "probe": rows["probe"], "layer": rows["layer"], "channel": rows["channel"]}
        for k in S.STAT_NAMES:
            cols[k] = np.asarray(ch[k]).ravel().astype(np.int32 if k in _COUNTS else np.float32)
        ly = S.stacked_layer_stats(m, red.offsets)
        n_l = len(rows["l_layer"])
        lcols = {"run": np.zeros(n_l, np.int32), "mini_epoch": np.full(n_l, me, np.int32), "probe": rows["l_probe"],
                 "layer": rows["l_layer"]}
        for k in S.LAYER_STAT_NAMES:  # (N, T) -> tap-major rows
            lcols[k] = np.asarray(ly[k]).T.ravel().astype(np.int32 if k in _COUNTS else np.float32)
        lcols["kind"] = rows["l_kind"]
        lcols["depth"] = rows["l_layer"]  # taps are in graph order
        return {"channels": cols, "layers": lcols}

    def _gate_tables(self, me: int, acts: Mapping[str, np.ndarray]) -> dict[str, Columns]:
        n = len(self.probes)
        gs: dict[str, list] = {k: [] for k in ("probe", "block", *_GATE_STATS)}
        gh: dict[str, list] = {k: [] for k in ("block", "bin_left", "bin_right", "count", "kind")}
        gc: dict[str, list] = {k: [] for k in ("probe", "block", "channel", "gate", "logit")}
        for i, b in enumerate(self.engine.se_blocks):
            if b.gate not in acts:
                continue
            g = acts[b.gate].reshape(n, -1)
            st = S.gate_stats(g)
            gs["probe"].append(np.arange(n, dtype=np.int32))
            gs["block"].append(np.full(n, i, np.int32))
            for k in _GATE_STATS:
                gs[k].append(np.asarray(st[k], np.float32))
            hists = [(0, st["hist"], st["edges"])]
            lg = acts.get(b.logits_tap)
            if lg is not None:
                lg = lg.reshape(n, -1)
                hists.append((1, S.histogram_rows(lg, LOGIT_BINS), LOGIT_BINS))
            else:
                lg = np.full_like(g, np.nan)
            for kind, h, edges in hists:
                nb = len(edges) - 1
                gh["block"].append(np.full(nb, i, np.int32))
                gh["bin_left"].append(np.asarray(edges[:-1], np.float64))
                gh["bin_right"].append(np.asarray(edges[1:], np.float64))
                gh["count"].append(h.sum(axis=0).astype(np.int64))
                gh["kind"].append(np.full(nb, kind, np.int32))
            c = g.shape[1]
            gc["probe"].append(np.repeat(np.arange(n, dtype=np.int32), c))
            gc["block"].append(np.full(n * c, i, np.int32))
            gc["channel"].append(np.tile(np.arange(c, dtype=np.int32), n))
            gc["gate"].append(g.ravel().astype(np.float32))
            gc["logit"].append(lg.ravel().astype(np.float32))
        out = {}
        for table, parts, has_probe in (("gates", gs, True), ("gate_hist", gh, False), ("gate_channels", gc, True)):
            if not parts["block"]:
                out[table] = {}
                continue
            cols = {k: np.concatenate(v) for k, v in parts.items()}
            k = len(cols["block"])
            out[table] = {"run": np.zeros(k, np.int32), "mini_epoch": np.full(k, me, np.int32), **cols}
        return out

    def _bn_batch(self, me: int, m: S.Moments, red: Reduced, weights: Mapping[str, np.ndarray]) -> Columns:
        rows = []
        for bn, src in self.bn_inputs.items():
            mm, mv = weights.get(f"{bn}/moving_mean"), weights.get(f"{bn}/moving_variance")
            if mm is None or mv is None or src not in red.taps:
                continue
            bmean, bvar = batch_mean_var(_columns(m, red.columns(src)))
            with np.errstate(all="ignore"):
                shift = np.abs(bmean - mm) / np.sqrt(mv + 1e-3)
                ratio = bvar / (mv + 1e-3)
            # all-NaN (NaN weights): NaN without numpy's "Mean of empty slice" warning on every checkpoint
            finite_s, finite_r = ~np.isnan(shift), ~np.isnan(ratio)
            rows.append({"run": self.run, "mini_epoch": me, "layer": bn, "input": src,
                         "mean_shift": float(np.mean(shift[finite_s])) if finite_s.any() else math.nan,
                         "var_ratio": float(np.median(ratio[finite_r])) if finite_r.any() else math.nan})
        return rows_to_columns(rows)

    def _extras_grads(self, me: int, acts: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray],
                      wv) -> tuple[Columns, Columns]:
        # a float sum is finite exactly when the array has no NaN/Inf: count only in arrays that have some
        bad = [v for v in weights.values() if v.dtype.kind == "f" and not np.isfinite(v.sum(dtype=np.float64))]
        extras = {"run": self.run, "mini_epoch": me, "n_probes": len(self.probes),
                  "n_nan_weights": int(sum(np.isnan(v).sum() for v in bad)),
                  "n_inf_weights": int(sum(np.isinf(v).sum() for v in bad)),
                  "loss": math.nan, "accuracy": math.nan, "loss_train_mode": math.nan, "accuracy_train_mode": math.nan}
        labels = self.probes.labels
        if self.out_tap is not None:
            extras["loss"], extras["accuracy"] = _loss_acc(acts[self.out_tap], labels)
        if self.options.train_mode and self.out_tap is not None and self.labelled:
            # BatchNorm in training mode normalises each batch of PROBE_BATCH probes by its own statistics
            out = np.concatenate([self.engine.extractor.run_training_mode(wv, self.x[b])[self.out_tap]
                                  for b in self.batches()])
            extras["loss_train_mode"], extras["accuracy_train_mode"] = _loss_acc(out, labels)
        grads = []
        if self.options.gradients and self.labelled:
            ok = np.flatnonzero(labels >= 0)[:PROBE_BATCH]  # one batch: norms of batch gradients do not add up
            try:
                gn = self.engine.extractor.gradients(wv, self.x[ok], labels[ok])
            except ValueError:
                gn = {}
            per_layer: dict[str, float] = {}
            for path, v in gn.items():
                layer, _ = W.split_path(path)
                per_layer[layer] = per_layer.get(layer, 0.0) + float(v) ** 2
            grads = [{"run": self.run, "mini_epoch": me, "layer": k, "grad_norm": math.sqrt(v)}
                     for k, v in per_layer.items()]
        return rows_to_columns([extras]), rows_to_columns(grads)


_COUNTS = ("n_nan", "n_inf")
_GATE_STATS = ("frac_low", "frac_high", "frac_half", "mean", "std")


def batch_mean_var(m: S.Moments) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) variance over all probes and positions, from (N, C) moments."""
    cnt = m.count.sum(axis=0).astype(np.float64)
    with np.errstate(all="ignore"):
        mean_n = m.s / m.count
        mean = m.s.sum(axis=0) / cnt
        dev = np.where(m.count > 0, m.count * (mean_n - mean) ** 2, 0.0)
        var = (m.m2.sum(axis=0) + dev.sum(axis=0)) / cnt
    return mean, var




class _WeightChain:
    """Weight tables need the first and the previous checkpoint's weights; only the sweep's worker uses this."""

    def __init__(self, engine: RunEngine, ckpts: list[Checkpoint], run_name: str):
        self.engine, self.ckpts, self.run_name = engine, ckpts, run_name
        self.init: W.Selected | None = None
        self.prev: W.Selected | None = None

    def reset(self) -> None:
        self.prev = None

    def step(self, c: Checkpoint, weights: Mapping[str, np.ndarray], has_prev: bool, compute: bool
             ) -> dict[str, Columns]:
        """Weight tables of checkpoint ``c`` (if ``compute``); remembers its weights for the next one.

        ``has_prev``: the checkpoint before ``c`` was read fine, so update ratios refer to it.
        """
        if self.init is None:
            self.init = _init_weights(self.engine, self.ckpts, c, weights)
        if not compute:
            self.prev = W.select(weights)
            return {}
        if self.prev is None and has_prev:
            self.prev = _prev_weights(self.engine, self.ckpts, c)
        rows, self.prev = W.weight_rows(c.mini_epoch, weights, init=self.init, prev=self.prev)
        run = {"run": self.run_name}
        return {"weights": rows_to_columns([{**run, **r} for r in rows]),
                "batchnorm": rows_to_columns([{**run, **r} for r in W.batchnorm_stats(c.mini_epoch, weights)])}


def _init_weights(engine: RunEngine, ckpts: list[Checkpoint], current: Checkpoint, weights) -> W.Selected:
    """Tracked weights of the first checkpoint (mini-epoch 0 normally): the reference for distance from init."""
    first = ckpts[0]
    return W.select(weights if first.mini_epoch == current.mini_epoch else engine.read_weights(first))


def _prev_weights(engine: RunEngine, ckpts: list[Checkpoint], current: Checkpoint) -> W.Selected | None:
    """Tracked weights of the checkpoint before ``current`` (for update ratios); None if none or unreadable."""
    before = [c for c in ckpts if c.mini_epoch < current.mini_epoch]
    if not before:
        return None
    try:
        return W.select(engine.read_weights(before[-1]))
    except Exception:
        return None
