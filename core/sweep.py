"""Sweep: every checkpoint x every tap x a probe set -> tidy tables, streamed and cached as Parquet."""
from __future__ import annotations

import hashlib
import io
import json
import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from core import stats as S
from core import weightstats as W
from core.atomic import atomic_write_bytes, atomic_write_json
from core.engine import ProbeSet, RunEngine, run_probe_set
from core.runs import Checkpoint, Run, RunError

#: Bump when the tables' content changes: old caches are then ignored.
SWEEP_VERSION = 1
#: Fixed logit bins (clipped into the end bins) so histograms line up across checkpoints.
LOGIT_BINS = np.linspace(-12.0, 12.0, 49)
TABLES = ("channels", "layers", "gates", "gate_hist", "gate_channels", "bn_batch", "extras", "grads")
WEIGHT_TABLES = ("weights", "batchnorm")

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SweepOptions:
    """What a sweep computes beyond per-tap statistics (each costs about one more pass)."""

    train_mode: bool = True  # probe-set loss/accuracy with BatchNorm in training mode
    gradients: bool = True  # per-layer gradient norms on the labelled probes
    weights: bool = True  # weight norms, update ratios, BatchNorm parameters


@dataclass
class SweepResult:
    """Tidy tables of one run's sweep; missing tables are empty DataFrames.

    Tables (one row per ...):
      channels      run, mini_epoch, probe, layer, channel: min, max, mean, std, mean_abs, frac_zero, n_nan, n_inf
      layers        run, mini_epoch, probe, layer (+ depth, kind): the same over the whole layer + frac_dead_channels
      gates         run, mini_epoch, probe, block: frac_low, frac_high, frac_half, mean, std
      gate_hist     run, mini_epoch, block, kind ('gate'|'logits'), bin_left, bin_right, count
      gate_channels run, mini_epoch, probe, block, channel, gate, logit
      bn_batch      run, mini_epoch, layer: mean_shift (|batch mean − moving mean| / sqrt(moving var), channel mean),
                    var_ratio (median batch var / moving var)
      extras        run, mini_epoch: loss, accuracy (inference mode), loss_train_mode, accuracy_train_mode,
                    n_nan_weights, n_inf_weights, n_probes
      grads         run, mini_epoch, layer: grad_norm
      weights       run, mini_epoch, layer, variable: norm, dist_from_init, rel_dist_from_init, update_norm,
                    update_ratio, n_nan, n_inf
      batchnorm     run, mini_epoch, layer: gamma/beta and moving-statistic summaries
    ``probe_ids[i]`` names probe ``i``; ``problems`` lists checkpoints that could not be swept.
    """

    run: str
    probe_ids: tuple[str, ...]
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    layer_order: tuple[str, ...] = ()
    se_blocks: tuple[str, ...] = ()

    def __getattr__(self, name: str) -> pd.DataFrame:
        if name in TABLES or name in WEIGHT_TABLES:
            return self.tables.get(name, pd.DataFrame())
        raise AttributeError(name)

    @property
    def mini_epochs(self) -> list[int]:
        t = self.tables.get("layers")
        return sorted(t["mini_epoch"].unique().tolist()) if t is not None and len(t) else []


def _frame_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def cache_key(probes: ProbeSet, preprocessing: Mapping, taps: Sequence[str], options: SweepOptions) -> str:
    """Folder name of a sweep's cache: probe content, preprocessing, taps, options and version."""
    h = hashlib.sha256(json.dumps({"v": SWEEP_VERSION, "probes": probes.key, "pre": dict(preprocessing),
                                   "taps": list(taps), "opt": [options.train_mode, options.gradients]},
                                  sort_keys=True).encode())
    return f"sweep-{h.hexdigest()[:16]}"


class _Layout:
    """Where a sweep's per-checkpoint parts live: ``cache/<key>/me_000003.<table>.parquet`` + ``.json``."""

    def __init__(self, root: Path):
        self.root = root

    def part(self, me: int, table: str) -> Path:
        return self.root / f"me_{me:06d}.{table}.parquet"

    def stamp(self, me: int, prefix: str = "me") -> Path:
        return self.root / f"{prefix}_{me:06d}.json"

    def valid(self, me: int, identity: list, prefix: str = "me") -> bool:
        try:
            return json.loads(self.stamp(me, prefix).read_text())["identity"] == identity
        except (OSError, ValueError, KeyError):
            return False


def _identity(c: Checkpoint) -> list:
    return [str(c.path), c.size, c.mtime_ns]


def _kind_depth(engine: RunEngine) -> tuple[dict[str, str], dict[str, int]]:
    kinds = engine.tap_kinds()
    return kinds, {t: i for i, t in enumerate(engine.taps)}


def _bn_inputs(engine: RunEngine) -> dict[str, str]:
    """BatchNorm layer name -> name of the tap that feeds it (when that tap is extracted)."""
    import keras

    producer = {}
    for layer in engine.model.layers:
        try:
            producer[id(layer.output)] = layer.name
        except (AttributeError, ValueError):
            continue
    out = {}
    for layer in engine.model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            try:
                src = producer.get(id(layer.input))
            except (AttributeError, ValueError):
                continue
            if src in engine.taps:
                out[layer.name] = src
    return out


def output_tap(engine: RunEngine) -> str | None:
    """Tap holding the model's (probability) output, if extracted."""
    out = engine.model.outputs[0]
    for layer in engine.model.layers:
        try:
            if layer.output is out and layer.name in engine.taps:
                return layer.name
        except (AttributeError, ValueError):
            continue
    return None


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


def _stacked_frame(run: str, me: int, key: str, names: list[str], blocks: list[dict[str, np.ndarray]],
                   per_channel: bool, n_probes: int) -> pd.DataFrame:
    """One tidy frame from per-tap stats dicts (each (N, C_tap) or (N,)), built once per checkpoint.

    Building one DataFrame per tap and concatenating costs more than the statistics
    themselves (categorical unions); this stacks the numpy arrays instead.
    """
    cols: dict[str, list[np.ndarray]] = {}
    codes, probes, channels = [], [], []
    for i, st in enumerate(blocks):
        first = next(iter(st.values()))
        c = first.shape[1] if per_channel else 1
        rows = n_probes * c
        codes.append(np.full(rows, i, np.int32))
        probes.append(np.repeat(np.arange(n_probes, dtype=np.int32), c))
        if per_channel:
            channels.append(np.tile(np.arange(c, dtype=np.int32), n_probes))
        for k, v in st.items():
            cols.setdefault(k, []).append(np.asarray(v).ravel())
    n = int(sum(len(c) for c in codes))
    out = {"run": pd.Categorical.from_codes(np.zeros(n, np.int8), categories=[run]),
           "mini_epoch": np.full(n, me, np.int32), "probe": np.concatenate(probes),
           key: pd.Categorical.from_codes(np.concatenate(codes), categories=names)}
    if per_channel:
        out["channel"] = np.concatenate(channels)
    for k, parts in cols.items():
        v = np.concatenate(parts)
        out[k] = v.astype(np.int32) if k in ("n_nan", "n_inf") else v.astype(np.float32)
    return pd.DataFrame(out)


def to_moments(d: Mapping[str, np.ndarray]) -> S.Moments:
    """``Extractor.run_reduced`` output for one tap -> ``core.stats.Moments`` (N, C)."""
    i64 = lambda k: np.rint(d[k]).astype(np.int64)  # noqa: E731 (counts came back as float32)
    f64 = lambda k: np.asarray(d[k], np.float64)  # noqa: E731
    return S.Moments(count=i64("count"), total=int(d["total"]), s=f64("s"), m2=f64("m2"),
                     abs_sum=f64("abs_sum"), min=f64("min"), max=f64("max"), n_zero=i64("n_zero"),
                     n_nan=i64("n_nan"), n_inf=i64("n_inf"))


def raw_taps(engine: RunEngine, out_tap: str | None) -> list[str]:
    """Taps whose raw values the tables need: SE gates and logits, and the model output."""
    names = [t for b in engine.se_blocks for t in (b.gate, b.logits_tap)]
    return names + ([out_tap] if out_tap else [])


def checkpoint_tables(engine: RunEngine, me: int, moments: Mapping[str, S.Moments], acts: Mapping[str, np.ndarray],
                      probes: ProbeSet, weights: Mapping[str, np.ndarray], wv, options: SweepOptions,
                      kinds: Mapping[str, str], depth: Mapping[str, int], bn_inputs: Mapping[str, str],
                      out_tap: str | None) -> dict[str, pd.DataFrame]:
    """All activation tables of one checkpoint.

    ``moments``: per-tap sufficient statistics (N, C); ``acts``: raw values of the
    taps listed by ``raw_taps`` (SE gates, logits, model output).
    """
    run = engine.run.name
    pid = np.arange(len(probes), dtype=np.int32)
    names = list(moments)
    ch, ly = [], []
    for tap in names:
        m = moments[tap]
        cs, ls = S.channel_stats_from_moments(m), S.layer_stats_from_moments(m)
        ch.append({k: cs[k] for k in S.STAT_NAMES})
        ly.append({k: ls[k] for k in S.LAYER_STAT_NAMES})
    layers = _stacked_frame(run, me, "layer", names, ly, False, len(probes))
    codes = layers["layer"].cat.codes.to_numpy()
    layers["kind"] = pd.Categorical(np.array([kinds.get(t, "other") for t in names])[codes])
    layers["depth"] = np.array([depth[t] for t in names], np.int32)[codes]
    out = {"channels": _stacked_frame(run, me, "layer", names, ch, True, len(probes)), "layers": layers}
    gs, gh, gc = [], [], []
    for b in engine.se_blocks:
        if b.gate not in acts:
            continue
        g = acts[b.gate].reshape(len(probes), -1)
        st = S.gate_stats(g)
        gs.append(S.gate_stats_frame(st, run=run, mini_epoch=me, block=b.name, probe_ids=pid))
        h = S.gate_hist_frame(st["hist"], st["edges"], run=run, mini_epoch=me, block=b.name)
        h["kind"] = "gate"
        gh.append(h)
        lg = acts.get(b.logits_tap)
        lg = lg.reshape(len(probes), -1) if lg is not None else np.full_like(g, np.nan)
        if b.logits_tap in acts:
            hl = S.gate_hist_frame(S.histogram_rows(lg, LOGIT_BINS), LOGIT_BINS, run=run, mini_epoch=me,
                                   block=b.name)
            hl["kind"] = "logits"
            gh.append(hl)
        n, c = g.shape
        gc.append(pd.DataFrame({"run": run, "mini_epoch": np.int32(me), "probe": np.repeat(pid, c),
                                "block": b.name, "channel": np.tile(np.arange(c, dtype=np.int32), n),
                                "gate": g.ravel().astype(np.float32), "logit": lg.ravel().astype(np.float32)}))
    for name, parts in (("gates", gs), ("gate_hist", gh), ("gate_channels", gc)):
        out[name] = S.concat_frames(parts) if parts else pd.DataFrame()
    bn_rows = []
    for bn, src in bn_inputs.items():
        mm, mv = weights.get(f"{bn}/moving_mean"), weights.get(f"{bn}/moving_variance")
        if mm is None or mv is None or src not in moments:
            continue
        bmean, bvar = batch_mean_var(moments[src])
        with np.errstate(all="ignore"):
            shift = np.abs(bmean - mm) / np.sqrt(mv + 1e-3)
            ratio = bvar / (mv + 1e-3)
        # all-NaN (NaN weights): NaN without numpy's "Mean of empty slice" warning on every checkpoint
        finite_s, finite_r = ~np.isnan(shift), ~np.isnan(ratio)
        bn_rows.append({"run": run, "mini_epoch": me, "layer": bn, "input": src,
                        "mean_shift": float(np.mean(shift[finite_s])) if finite_s.any() else math.nan,
                        "var_ratio": float(np.median(ratio[finite_r])) if finite_r.any() else math.nan})
    out["bn_batch"] = pd.DataFrame(bn_rows)
    n_nan = int(sum(np.isnan(v).sum() for v in weights.values() if v.dtype.kind == "f"))
    n_inf = int(sum(np.isinf(v).sum() for v in weights.values() if v.dtype.kind == "f"))
    extras = {"run": run, "mini_epoch": me, "n_probes": len(probes), "n_nan_weights": n_nan,
              "n_inf_weights": n_inf, "loss": math.nan, "accuracy": math.nan,
              "loss_train_mode": math.nan, "accuracy_train_mode": math.nan}
    if out_tap is not None:
        extras["loss"], extras["accuracy"] = _loss_acc(acts[out_tap], probes.labels)
    labelled = bool((probes.labels >= 0).any())
    x = engine.preprocess(probes.images)
    if options.train_mode and out_tap is not None and labelled:
        tm = engine.extractor.run_training_mode(wv, x)
        extras["loss_train_mode"], extras["accuracy_train_mode"] = _loss_acc(tm[out_tap], probes.labels)
    out["extras"] = pd.DataFrame([extras])
    grads = []
    if options.gradients and labelled:
        ok = probes.labels >= 0
        try:
            gn = engine.extractor.gradients(wv, x[ok], probes.labels[ok])
        except ValueError:
            gn = {}
        per_layer: dict[str, float] = {}
        for path, v in gn.items():
            layer, _ = W.split_path(path)
            per_layer[layer] = per_layer.get(layer, 0.0) + float(v) ** 2
        grads = [{"run": run, "mini_epoch": me, "layer": k, "grad_norm": math.sqrt(v)} for k, v in per_layer.items()]
    out["grads"] = pd.DataFrame(grads)
    return out


def batch_mean_var(m: S.Moments) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and (population) variance over all probes and positions, from (N, C) moments."""
    cnt = m.count.sum(axis=0).astype(np.float64)
    with np.errstate(all="ignore"):
        mean_n = m.s / m.count
        mean = m.s.sum(axis=0) / cnt
        dev = np.where(m.count > 0, m.count * (mean_n - mean) ** 2, 0.0)
        var = (m.m2.sum(axis=0) + dev.sum(axis=0)) / cnt
    return mean, var


def sweep(run: Run, probes: ProbeSet | None = None, *, taps: Sequence[str] | None = None,
          engine: RunEngine | None = None, options: SweepOptions = SweepOptions(),
          progress: Progress | None = None, stop: threading.Event | None = None,
          mini_epochs: Sequence[int] | None = None, use_cache: bool = True) -> SweepResult:
    """Compute (or load from the run's cache) every table for every checkpoint.

    Streamed checkpoint by checkpoint: only one checkpoint's activations, the
    initial and the previous weights are in memory. Each checkpoint's tables are
    written to ``run/cache/<key>/`` as soon as they are computed, so an
    interrupted sweep (``stop`` set, or a crash) resumes where it stopped; a
    checkpoint file that changed (size or mtime) is recomputed. A checkpoint
    that cannot be read is reported in ``problems`` and skipped.
    ``progress(done, total, message)`` is called after each checkpoint.
    """
    engine = engine or RunEngine(run, taps)
    probes = probes if probes is not None else run_probe_set(run)
    if len(probes) == 0:
        raise RunError(run.path, "no probe images: pass probe images or record a probe set with the run")
    key = cache_key(probes, run.manifest.preprocessing, engine.taps, options)
    layout = _Layout(run.cache_dir / key)
    ckpts = run.checkpoints()
    if mini_epochs is not None:
        wanted = set(mini_epochs)
        ckpts = [c for c in ckpts if c.mini_epoch in wanted]
    kinds, depth = _kind_depth(engine)
    bn_inputs = _bn_inputs(engine)
    out_tap = output_tap(engine)
    raw_names = raw_taps(engine, out_tap)
    result = SweepResult(run.name, probes.ids, layer_order=tuple(engine.taps),
                         se_blocks=tuple(b.name for b in engine.se_blocks))
    result.problems.extend(run.problems)
    parts: dict[str, list[pd.DataFrame]] = {t: [] for t in (*TABLES, *WEIGHT_TABLES)}
    init_w: dict | None = None
    prev_sel: dict | None = None
    prev_identity: list | None = None
    all_ckpts = run.checkpoints()
    act_slots: list = []  # per swept checkpoint: its activation tables, or a Future of them
    inflight = None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sweep-tables")
    for i, c in enumerate(ckpts):
        if stop is not None and stop.is_set():
            result.problems.append("sweep stopped before the end; run it again to continue")
            break
        ident = _identity(c)
        have_acts = use_cache and layout.valid(c.mini_epoch, ident)
        w_ident = [ident, prev_identity]
        have_w = use_cache and (not options.weights or layout.valid(c.mini_epoch, w_ident, "w"))
        try:
            if have_acts and have_w:
                act_slots.append({t: _read_part(layout.part(c.mini_epoch, t)) for t in TABLES})
                if options.weights:
                    for t in WEIGHT_TABLES:
                        parts[t].append(_read_part(layout.part(c.mini_epoch, t)))
                prev_sel, init_w = None, init_w  # weights not loaded: the next one must read its own
                prev_identity = ident
                if progress:
                    progress(i + 1, len(ckpts), f"mini-epoch {c.mini_epoch} (cached)")
                continue
            weights = engine.read_weights(c)
        except RunError as e:
            result.problems.append(str(e))
            prev_sel, prev_identity = None, None
            continue
        except Exception as e:  # a foreign checkpoint that does not load: report, keep going
            result.problems.append(f"{c.path}: could not be read ({type(e).__name__}: {e})")
            prev_sel, prev_identity = None, None
            continue
        if not have_acts:
            try:
                wv = engine.weight_values(weights)
            except ValueError as e:
                result.problems.append(f"{c.path}: {e}")
                prev_sel, prev_identity = None, None
                continue
            red, acts = engine.extractor.run_reduced(wv, engine.preprocess(probes.images), raw=raw_names)
            moments = {t: to_moments(d) for t, d in red.items()}
            bad = [t for t, m in moments.items() if not np.isfinite(m.s).all()]
            if bad:  # NaN/Inf somewhere: redo those taps with masked numpy statistics
                redo = engine.extractor.run(wv, engine.preprocess(probes.images))
                moments.update({t: S.moments(redo[t]) for t in bad})
                del redo
            if inflight is not None:  # at most one checkpoint post-processing at a time: memory stays flat
                inflight.result()

            def finish(me=c.mini_epoch, ident=ident, moments=moments, acts=acts, weights=weights, wv=wv):
                tabs = checkpoint_tables(engine, me, moments, acts, probes, weights, wv, options, kinds,
                                         depth, bn_inputs, out_tap)
                layout.root.mkdir(parents=True, exist_ok=True)
                for t in TABLES:
                    atomic_write_bytes(layout.part(me, t), _frame_bytes(tabs[t]), fsync=False)
                atomic_write_json(layout.stamp(me), {"identity": ident})
                return tabs

            # Tables and Parquet are numpy/pandas work; the next forward pass runs in TensorFlow
            # (GIL released) meanwhile, so the sweep costs about max(forward, tables), not the sum.
            inflight = pool.submit(finish)
            act_slots.append(inflight)
            del acts, red, moments
        else:
            act_slots.append({t: _read_part(layout.part(c.mini_epoch, t)) for t in TABLES})
        if options.weights:
            if init_w is None:
                init_w = _init_weights(engine, all_ckpts, c, weights)
            if prev_sel is None and prev_identity is not None:
                prev_sel = _prev_weights(engine, all_ckpts, c)
            if have_w:
                for t in WEIGHT_TABLES:
                    parts[t].append(_read_part(layout.part(c.mini_epoch, t)))
                _, prev_sel = W.weight_rows(c.mini_epoch, weights, init=init_w, prev=None)
            else:
                rows, prev_sel = W.weight_rows(c.mini_epoch, weights, init=init_w, prev=prev_sel)
                wt = pd.DataFrame(rows)
                bt = pd.DataFrame(W.batchnorm_stats(c.mini_epoch, weights))
                for t, df in (("weights", wt), ("batchnorm", bt)):
                    df.insert(0, "run", run.name)
                    atomic_write_bytes(layout.part(c.mini_epoch, t), _frame_bytes(df), fsync=False)
                    parts[t].append(df)
                atomic_write_json(layout.stamp(c.mini_epoch, "w"), {"identity": w_ident})
        prev_identity = ident
        if progress:
            progress(i + 1, len(ckpts), f"mini-epoch {c.mini_epoch}")
    try:
        for slot in act_slots:
            tabs = slot.result() if isinstance(slot, Future) else slot
            for t in TABLES:
                parts[t].append(tabs[t])
    finally:
        pool.shutdown(wait=True)
    for t, ps in parts.items():
        ps = [p for p in ps if len(p)]
        result.tables[t] = S.concat_frames(ps) if ps else pd.DataFrame()
    return result


def _read_part(p: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(p)
    except FileNotFoundError:
        return pd.DataFrame()
    except Exception as e:  # a damaged cache file: it is derived data, so say so and recompute next time
        p.unlink(missing_ok=True)
        raise RunError(p, f"damaged cache file removed ({type(e).__name__}); run the sweep again") from None


def _init_weights(engine: RunEngine, ckpts: list[Checkpoint], current: Checkpoint, weights) -> dict:
    """Weights of the first checkpoint (mini-epoch 0 normally): the reference for distance from init."""
    first = ckpts[0]
    return weights if first.mini_epoch == current.mini_epoch else engine.read_weights(first)


def _prev_weights(engine: RunEngine, ckpts: list[Checkpoint], current: Checkpoint) -> dict | None:
    before = [c for c in ckpts if c.mini_epoch < current.mini_epoch]
    if not before:
        return None
    try:
        _, sel = W.weight_rows(before[-1].mini_epoch, engine.read_weights(before[-1]), init={}, prev=None)
        return sel
    except Exception:
        return None
