"""All Streamlit caching lives here; cached functions take plain keys (paths, mtimes, identities, hashes)."""
from __future__ import annotations

import functools
import hashlib
import inspect
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import streamlit as st

from core.run.runs import HISTORY, MANIFEST, PROBES, Checkpoint, Run, RunInfo, list_runs, open_run


def _keep_keras_session() -> None:
    """Stop Streamlit from calling ``keras.backend.clear_session()`` after every script run.

    Streamlit does it to free models built inside a script; here models live only in
    ``st.cache_resource``. Measured with TensorFlow loaded: each call costs a full
    ``gc.collect`` (~150-350 ms) and flushes TensorFlow's kernel cache, which makes the next
    forward pass ~5x slower (26 -> 140 ms) - on every rerun, i.e. every scrub step.
    """
    try:
        from streamlit.runtime.scriptrunner import script_runner
    except ImportError:  # a Streamlit without that module: nothing to undo
        return
    if hasattr(script_runner, "_clean_problem_modules"):
        script_runner._clean_problem_modules = lambda: None


_keep_keras_session()
try:  # Altair validates every object it builds in "debug mode"; charts here are built by tested code
    import altair as _alt

    _alt.utils.schemapi.disable_debug_mode()
except (ImportError, AttributeError):
    pass

#: Sweep options of a one-image sweep (grid page: fixed colour scale, channel trajectories).
IMAGE_SWEEP = dict(train_mode=False, gradients=False, weights=False)

# Sweeps known to be complete on disk in this process: (run_path, ckpt_stamp, probe_key, trust, kind).
_COMPLETE: set[tuple] = set()
# A result just computed with a progress bar, handed to the cached loader so it is not read twice.
_HANDOFF: dict[tuple, Any] = {}
_HANDOFF_LOCK = threading.Lock()


class _Memo:
    """A thread-safe LRU of a function's results, keyed by its arguments whose names do not start with "_".

    Used instead of ``st.cache_resource`` / ``st.cache_data`` for what a scrub step looks up
    ~10 times: those hash every argument through Streamlit's hasher (0.15-0.3 ms a lookup,
    measured), this is a dict lookup. Values are shared, never copied: return immutable
    objects or read-only arrays. Concurrent callers of one key compute it once; errors are
    not cached. ``clear()`` empties it, as Streamlit's ``.clear()`` does.
    """

    def __init__(self, fn: Callable[..., Any], max_entries: int) -> None:
        functools.update_wrapper(self, fn)
        self.fn, self.max_entries = fn, max_entries
        params = list(inspect.signature(fn).parameters)
        self.keep = tuple(i for i, name in enumerate(params) if not name.startswith("_"))
        self.lock = threading.Lock()
        self.values: OrderedDict[tuple, Any] = OrderedDict()
        self.busy: dict[tuple, threading.Lock] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = (tuple(args[i] for i in self.keep if i < len(args)),
               tuple(sorted((k, v) for k, v in kwargs.items() if not k.startswith("_"))))
        with self.lock:
            if key in self.values:
                self.values.move_to_end(key)
                return self.values[key]
            gate = self.busy.setdefault(key, threading.Lock())
        with gate:
            with self.lock:
                if key in self.values:
                    return self.values[key]
            try:
                value = self.fn(*args, **kwargs)
            finally:
                with self.lock:
                    self.busy.pop(key, None)
            with self.lock:
                self.values[key] = value
                while len(self.values) > self.max_entries:
                    self.values.popitem(last=False)
            return value

    def clear(self) -> None:
        with self.lock:
            self.values.clear()


def memo(max_entries: int) -> Callable[[Callable[..., Any]], _Memo]:
    """Decorator: ``_Memo`` with at most ``max_entries`` results."""
    return lambda fn: _Memo(fn, max_entries)


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:
        return 0


def dir_stamp(path: Path) -> tuple[int, int]:
    """A cheap key that changes when files are added to or replaced in a run."""
    ck = path / "checkpoints"
    return (_mtime(path / MANIFEST), _mtime(path / HISTORY) + _mtime(ck))


def ckpt_key(c: Checkpoint) -> tuple[int, str, str, int, int]:
    """A checkpoint as a plain cache key: (mini_epoch, path, kind, size, mtime_ns)."""
    return (c.mini_epoch, str(c.path), c.kind, c.size, c.mtime_ns)


def checkpoint_of(ckpt: tuple) -> Checkpoint:
    """The checkpoint a ``ckpt_key`` names."""
    me, path, kind, size, mtime = ckpt
    return Checkpoint(me, Path(path), kind, size, mtime)


def ckpt_stamp(ckpts: list[Checkpoint]) -> tuple:
    """Identity of a run's whole checkpoint list (changes when one is added or rewritten)."""
    return tuple((c.mini_epoch, c.size, c.mtime_ns) for c in ckpts)


def arch_mtime(run: Run) -> int:
    try:
        return _mtime(run.architecture_path)
    except Exception:  # a broken manifest: the engine call reports it
        return 0


@st.cache_data(ttl=5, show_spinner=False)
def runs_list(root: str) -> list[RunInfo]:
    return list_runs(root)


def run(root: str, name: str) -> Run:
    """Open a run by name (path-traversal safe); cheap, so not cached."""
    return open_run(root, name)


@st.cache_data(show_spinner=False, max_entries=64)
def history(run_path: str, stamp: tuple[int, int]) -> tuple[pd.DataFrame, list[str]]:
    r = Run(run_path)
    df = r.history()
    return df, list(r.problems)


@st.cache_resource(show_spinner="Loading the architecture…", max_entries=8)
def model(run_path: str, arch_mtime: int, trust: bool = False):
    """The run's Keras model (weights of mini-epoch 0); shared across sessions, never mutated."""
    return Run(run_path).load_model(trust=trust)


@st.cache_data(show_spinner=False, max_entries=16)
def architecture_table(run_path: str, arch_mtime: int, trust: bool = False) -> pd.DataFrame:
    from core.engine.architecture import architecture_table as table

    return table(model(run_path, arch_mtime, trust))


@st.cache_resource(show_spinner="Building the extraction engine (once per run)…", max_entries=8)
def engine(run_path: str, arch_mtime: int, trust: bool = False):
    """The run's RunEngine (model + traced forward pass); thread-safe, shared by every session."""
    from core.engine.engine import RunEngine

    return RunEngine(Run(run_path), trust=trust)


@st.cache_data(show_spinner=False, max_entries=16)
def probe_set(run_path: str, probes_mtime: int) -> tuple[np.ndarray, np.ndarray]:
    """The run's probe set: x uint8 (N, H, W, C), y int64 (N,)."""
    return Run(run_path).probes()


def probes_mtime(run: Run) -> int:
    return _mtime(run.path / PROBES)


def digest(data: bytes) -> str:
    """Short content hash used as the key of uploaded bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


@st.cache_data(show_spinner=False, max_entries=64)
def decode_image(key: str, size: tuple[int, int], channels: int, _src: bytes | str) -> tuple[np.ndarray | None, str | None]:
    """(uint8 (H, W, C) image, None) or (None, the ImageError message) for an upload or a file.

    ``key`` identifies ``_src``: the content hash of uploaded bytes, or path + mtime of a file.
    """
    from core.run.images import ImageError, load_probe_image

    try:
        return load_probe_image(_src, size, channels=1 if channels == 1 else 3), None
    except ImageError as e:
        return None, str(e)


@st.cache_data(show_spinner=False, max_entries=32)
def image_png(key: str, _pixels: np.ndarray) -> bytes:
    """uint8 (H, W, C) image as PNG bytes (``key``: a digest of the pixels); not re-encoded on every rerun."""
    return _encode_png(_pixels)


def _encode_png(pixels: np.ndarray) -> bytes:
    from core.render import grids

    return grids.to_png(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels)


#: Entries of ``image_activations``: at 224 px all taps of one image are ~170 MB.
ACTIVATION_ENTRIES = 4


class _ReadAhead:
    """Activations (and grid images) of the checkpoint after the one on screen, made in one background thread.

    Next, Play and the arrow keys step forward one checkpoint; with the work done while the
    user looks at the current one, the step costs a rerun instead of a weights read, a
    forward pass and drawing. Holds at most two results (keys of ``image_activations``)
    and eight drawings (keys of ``grid_html`` and ``channel_view_html``).
    """

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ade-read-ahead")
        self.lock = threading.Lock()
        self.jobs: OrderedDict[tuple, Future] = OrderedDict()
        self.served: OrderedDict[tuple, None] = OrderedDict()  # keys image_activations computed lately
        self.drawings: OrderedDict[tuple, str] = OrderedDict()  # drawn ahead, until drawn() asks
        self.prepared: dict[tuple, Future] = {}  # one-tap extractors being built

    def submit(self, key: tuple, fn: Callable[[], dict[str, np.ndarray]]) -> bool:
        with self.lock:
            if key in self.jobs or key in self.served:
                return False
            self.jobs[key] = self.pool.submit(fn)
            while len(self.jobs) > 2:
                self.jobs.popitem(last=False)[1].cancel()
            return True

    def take(self, key: tuple) -> dict[str, np.ndarray] | None:
        """The result for ``key`` (waiting if it is being computed), or None: compute it in the caller."""
        with self.lock:
            fut = self.jobs.pop(key, None)
            self.served[key] = None
            while len(self.served) > ACTIVATION_ENTRIES:
                self.served.popitem(last=False)
        if fut is None or fut.cancelled():
            return None
        try:
            return fut.result()
        except Exception:  # computed again in the caller, which reports the error properly
            return None

    def keep_drawings(self, drawings: dict[tuple, str]) -> None:
        with self.lock:
            self.drawings.update(drawings)
            while len(self.drawings) > 8:
                self.drawings.popitem(last=False)

    def drawn(self, key: tuple) -> str | None:
        """A drawing made ahead for this cache key (once), else None."""
        with self.lock:
            return self.drawings.pop(key, None)

    def idle(self) -> bool:
        with self.lock:
            return all(f.done() for f in (*self.jobs.values(), *self.prepared.values()))

    def known(self, key: tuple) -> bool:
        """``image_activations`` of ``key`` is being computed ahead or was computed lately."""
        with self.lock:
            return key in self.jobs or key in self.served

    def prepare(self, key: tuple, fn: Callable[[], None]) -> None:
        """Run ``fn`` in the background thread (building a one-tap extractor) unless it is running for ``key``."""
        with self.lock:
            for k in [k for k, f in self.prepared.items() if f.done()]:
                del self.prepared[k]
            if key not in self.prepared:
                self.prepared[key] = self.pool.submit(fn)


@memo(1)
def _read_ahead() -> _ReadAhead:
    return _ReadAhead()


def _activations_key(run_path: str, arch: int, ckpt: tuple, image_key: str, trust: bool) -> tuple:
    return (run_path, arch, ckpt, image_key, trust)


def _compute_activations(eng, ckpt: tuple, image: np.ndarray) -> dict[str, np.ndarray]:
    acts = eng.activations(checkpoint_of(ckpt), image[None])
    for a in acts.values():
        a.flags.writeable = False
    return acts


@memo(ACTIVATION_ENTRIES)
def image_activations(run_path: str, arch: int, ckpt: tuple, image_key: str, trust: bool,
                      _image: np.ndarray) -> dict[str, np.ndarray]:
    """Every tap of ONE probe image at ONE checkpoint: {tap: (1, ...)} (read-only arrays).

    ``ckpt`` is ``ckpt_key(checkpoint)``; ``image_key`` identifies ``_image`` uint8 (H, W, C).
    Taken from ``read_ahead`` when it computed them already.
    """
    acts = _read_ahead().take(_activations_key(run_path, arch, ckpt, image_key, trust))
    return acts if acts is not None else _compute_activations(engine(run_path, arch, trust), ckpt, _image)


def read_ahead(run_path: str, arch: int, ckpt: tuple, image_key: str, trust: bool, image: np.ndarray,
               view: GridView | None = None) -> bool:
    """Start computing ``image_activations`` of ``ckpt`` in the background (unless done lately); True if started.

    With ``view``, also draw the channel grid page's images of that checkpoint. The engine
    is looked up here, in the script thread: Streamlit's caches need its context.
    """
    eng = engine(run_path, arch, trust)
    key = _activations_key(run_path, arch, ckpt, image_key, trust)

    ahead = _read_ahead()

    def job() -> dict[str, np.ndarray]:
        acts = _compute_activations(eng, ckpt, image)
        if view is not None and view.layer in acts:
            ahead.keep_drawings(_draw_ahead(acts, view, run_path, ckpt, image_key, image))
        return acts

    return ahead.submit(key, job)


def read_ahead_idle() -> bool:
    """No read-ahead work running (benchmarks and tests wait for this)."""
    return _read_ahead().idle()


@memo(64)
def image_layer(run_path: str, arch: int, ckpt: tuple, image_key: str, layer: str, trust: bool,
                _image: np.ndarray) -> np.ndarray:
    """One tap of one probe image at one checkpoint: (1, ...) read-only (scrubbing keeps these).

    From ``image_activations`` when they are computed ahead or lately; else, once the tap's
    one-tap extractor is built (in the background, the first time), only this tap is computed
    from only the weights it depends on (``RunEngine.tap_activations``).
    """
    key = _activations_key(run_path, arch, ckpt, image_key, trust)
    ahead = _read_ahead()
    if not ahead.known(key):
        eng = engine(run_path, arch, trust)
        a = eng.tap_activations(checkpoint_of(ckpt), _image[None], layer)
        if a is not None:
            a.flags.writeable = False
            return a
        ahead.prepare(("tap", run_path, arch, trust, layer), functools.partial(eng.prepare_tap, layer))
    return image_activations(run_path, arch, ckpt, image_key, trust, _image)[layer]


@memo(64)
def layer_maps(run_path: str, arch: int, ckpt: tuple, image_key: str, layer: str, trust: bool,
               _image: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``core.render.grids.channel_maps`` (C, H, W) of ``image_layer`` and their ``channel_summary`` (read-only)."""
    from core.render import grids

    maps = grids.channel_maps(image_layer(run_path, arch, ckpt, image_key, layer, trust, _image))
    summary = grids.channel_summary(maps)
    for a in (maps, *summary.values()):
        a.flags.writeable = False
    return maps, summary


def _probe_set_of(run_path: str):
    from core.engine.engine import run_probe_set

    return run_probe_set(Run(run_path))


def _image_probes(image_key: str, image: np.ndarray):
    from core.engine.engine import single_probe

    return single_probe(image, image_key)


def _do_sweep(run_path: str, arch: int, trust: bool, probes, options: dict,
              progress: Callable[[int, int, str], None] | None = None):
    from core.analysis.sweep import SweepOptions, sweep

    return sweep(Run(run_path), probes, engine=engine(run_path, arch, trust),
                 options=SweepOptions(**options), progress=progress)


@st.cache_data(show_spinner="Reading the statistics…", max_entries=6)
def sweep_tables(run_path: str, ckpt_stamp: tuple, probe_key: str, arch: int = 0, trust: bool = False):
    """SweepResult of the run's probe set over every checkpoint (computed or read from the run's cache)."""
    key = (run_path, ckpt_stamp, probe_key, trust, "probes")
    with _HANDOFF_LOCK:
        r = _HANDOFF.pop(key, None)
    return r if r is not None else _do_sweep(run_path, arch, trust, _probe_set_of(run_path), {})


@st.cache_data(show_spinner="Reading the statistics…", max_entries=16)
def image_sweep(run_path: str, ckpt_stamp: tuple, image_key: str, arch: int = 0, trust: bool = False,
                _image: np.ndarray | None = None):
    """SweepResult of ONE image (``_image`` uint8 (H, W, C), identified by ``image_key``) over every checkpoint."""
    key = (run_path, ckpt_stamp, image_key, trust, "image")
    with _HANDOFF_LOCK:
        r = _HANDOFF.pop(key, None)
    return r if r is not None else _do_sweep(run_path, arch, trust, _image_probes(image_key, _image), IMAGE_SWEEP)


def is_swept(run_path: str, ckpt_stamp: tuple, key: str, trust: bool, kind: str) -> bool:
    """True when this process already completed that sweep (its tables load without computing)."""
    return (run_path, ckpt_stamp, key, trust, kind) in _COMPLETE


def swept(run: Run, stamp: tuple, trust: bool, *, image_key: str | None = None,
          image: np.ndarray | None = None, where: Any = None, label: str = "") -> Any:
    """The SweepResult of the run's probe set (``image_key`` None) or of one image.

    When this process has not completed that sweep yet, compute it here with an
    ``st.progress`` bar in ``where`` (the sweep writes each checkpoint to the run's
    cache as it goes, so leaving the page and coming back resumes it).
    """
    rp, arch = str(run.path), arch_mtime(run)
    if image_key is None:
        probe_key, kind = _probe_key(run), "probes"
    else:
        probe_key, kind = image_key, "image"
    key = (rp, stamp, probe_key, trust, kind)
    if key not in _COMPLETE:
        where = where if where is not None else st
        n = len(stamp)
        bar = where.progress(0.0, text=f"{label or 'Computing statistics'}: 0 / {n} checkpoints")

        def progress(done: int, total: int, msg: str) -> None:
            bar.progress(done / max(total, 1), text=f"{label or 'Computing statistics'}: {done} / {total} "
                                                    f"checkpoints ({msg})")

        probes = _probe_set_of(rp) if image_key is None else _image_probes(image_key, image)
        result = _do_sweep(rp, arch, trust, probes, {} if image_key is None else IMAGE_SWEEP, progress)
        bar.empty()
        with _HANDOFF_LOCK:
            _HANDOFF[key] = result
        _COMPLETE.add(key)
    if image_key is None:
        return sweep_tables(rp, stamp, probe_key, arch, trust)
    return image_sweep(rp, stamp, probe_key, arch, trust, _image=image)


@st.cache_data(show_spinner=False, max_entries=16)
def _probe_key_cached(run_path: str, probes_mtime: int) -> str:
    return _probe_set_of(run_path).key


def _probe_key(run: Run) -> str:
    return _probe_key_cached(str(run.path), probes_mtime(run))


def diagnose_available() -> bool:
    """True when ``core.analysis.diagnose`` (written separately) can be imported."""
    try:
        import core.analysis.diagnose  # noqa: F401
    except ImportError:
        return False
    return True


@st.cache_data(show_spinner=False, max_entries=16)
def findings(run_path: str, ckpt_stamp: tuple, probe_key: str, hist_stamp: tuple, arch: int = 0,
             trust: bool = False) -> list:
    """Findings of ``core.analysis.diagnose.diagnose`` for the run's probe-set sweep (empty without the module)."""
    try:
        from core.analysis.diagnose import diagnose
    except ImportError:
        return []
    result = sweep_tables(run_path, ckpt_stamp, probe_key, arch, trust)
    hist, _ = history(run_path, hist_stamp)
    return list(diagnose(result, hist, Run(run_path).manifest))


@st.cache_data(show_spinner=False, max_entries=512)
def chart_spec(name: str, deps: tuple, _build: Callable[[], Any]) -> dict:
    """The Vega-Lite spec (data inline) of chart ``name`` built by ``_build() -> (chart, table)``.

    ``deps`` must hold every plain value the chart depends on (run path, checkpoint stamp,
    probe key, layer, options): building and validating an Altair chart costs ~0.1-0.3 s,
    so reruns that do not change a chart's inputs reuse its spec.
    """
    chart, _ = _build()
    return chart.to_dict(validate=False)


@memo(64)  # a grid of 64 tiles of 112x112 is 1.6 MB of HTML
def grid_html(run_path: str, ckpt: tuple, image_key: str, layer: str, settings: tuple,
              _maps: np.ndarray, _base: np.ndarray | None = None, _summary: dict | None = None) -> str:
    """The channel grid as HTML (``core.render.grids.grid_html``).

    ``settings`` = (mode, cmap, fixed, sort, page, per_page, tile_px, alpha, selected).
    ``_maps`` (C, H, W) and ``_base`` (the probe image) are what (run_path, ckpt, image_key, layer)
    identify, so revisiting a checkpoint or re-running the page costs no drawing.
    """
    drawn = _read_ahead().drawn(("grid", run_path, ckpt, image_key, layer, settings))
    return drawn if drawn is not None else _draw_grid(_maps, settings, _base, _summary)


def _draw_grid(maps: np.ndarray, settings: tuple, base: np.ndarray | None, summary: dict | None = None) -> str:
    from core.render import grids

    mode, cmap, fixed, sort, page, per_page, tile_px, alpha, selected = settings
    return grids.grid_html(maps, mode=mode, cmap=cmap, fixed=fixed, sort=sort, page=page, per_page=per_page,
                           tile_px=tile_px, base_uri=_overlay_uri(base, alpha), alpha=alpha, selected=selected,
                           summary=summary).html


def grid_png(maps: np.ndarray | None = None, settings: tuple = (), base: np.ndarray | None = None,
             summary: dict | None = None, title: str = "") -> bytes:
    """A title line, the colour bar and the channel grid with its labels as one PNG (the grid page's download).

    Without ``maps`` (nothing drawn), a PNG that says so.
    """
    from core.render import grids

    if maps is None or summary is None:
        note = np.full((20, 420, 3), 255, np.uint8)
        grids.draw_text(note, 4, 4, "No grid: this checkpoint could not be extracted.", 12, (40, 40, 40))
        return grids.to_png(note)
    mode, cmap, fixed, sort, page, per_page, tile_px, alpha, selected = settings
    g = grids.grid_image(maps, mode=mode, cmap=cmap, fixed=fixed, sort=sort, page=page, per_page=per_page,
                         tile_px=tile_px, base=base, alpha=alpha, selected=selected, summary=summary)
    lo, hi = grid_scales(summary, settings)
    bar_cmap, bar_lo, bar_hi, low_text, high_text = bar_args(settings, lo, hi)
    bar = grids.colorbar(bar_cmap, bar_lo, bar_hi, low_text=low_text, high_text=high_text)
    head = np.full((18, max(g.pixels.shape[1], bar.shape[1] + 4), 3), 255, np.uint8)
    grids.draw_text(head, 4, 4, title, 12, (40, 40, 40))
    return grids.to_png(grids.stack([head, np.pad(bar, ((0, 0), (4, 0), (0, 0)), constant_values=255), g.pixels],
                                    gap=4))


@memo(32)
def image_uri(key: str, _pixels: np.ndarray) -> str:
    """uint8 (H, W, C) image as a PNG ``data:`` URI (``key``: a digest of the pixels)."""
    from core.render import grids

    return grids.data_uri(_encode_png(_pixels))


def _overlay_uri(base: np.ndarray | None, alpha: float) -> str | None:
    """The probe image under the tiles as a ``data:`` URI, or None without an overlay.

    Keyed by the pixels' digest: an image key such as ``probe:000`` names different pixels in different runs.
    """
    return image_uri(digest(base.tobytes()), base) if base is not None and alpha > 0 else None


@memo(256)
def colorbar_html(cmap: str, lo: float | None, hi: float | None, low_text: str | None = None,
                  high_text: str | None = None, caption: str = "") -> str:
    """A colour bar (see ``core.render.grids.colorbar_html``)."""
    from core.render import grids

    return grids.colorbar_html(cmap, lo, hi, caption=caption, low_text=low_text, high_text=high_text)


@memo(128)
def channel_view_html(run_path: str, ckpt: tuple, image_key: str, layer: str, channel: int, scale: tuple,
                      _map: np.ndarray, _base: np.ndarray | None = None) -> str:
    """The large view of one channel as HTML; ``scale`` = (lo, hi, cmap, size, alpha)."""
    drawn = _read_ahead().drawn(("view", run_path, ckpt, image_key, layer, channel, scale))
    return drawn if drawn is not None else _draw_view(_map, scale, _base)


def _draw_view(m: np.ndarray, scale: tuple, base: np.ndarray | None) -> str:
    from core.render import grids

    lo, hi, cmap, size, alpha = scale
    return grids.channel_view_html(m, lo, hi, cmap, size, _overlay_uri(base, alpha), alpha)


@dataclass(frozen=True)
class GridView:
    """What the channel grid page shows of a layer, independent of the checkpoint (to draw one ahead)."""

    layer: str
    settings: tuple  # grid_html's settings: (mode, cmap, fixed, sort, page, per_page, tile_px, alpha, selected)
    channel: int  # the single-channel view
    view_px: int


def grid_scales(summary: dict, settings: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel colour range (lo, hi) of the grid with ``settings`` (C,) each."""
    from core.render import grids

    mode, cmap, fixed = settings[:3]
    return grids.value_ranges(summary, mode, fixed, cmap in grids.DIVERGING)


def bar_args(settings: tuple, lo: np.ndarray, hi: np.ndarray) -> tuple:
    """``colorbar_html`` arguments of the grid's colour bar (without the caption)."""
    from core.render import grids

    mode, cmap = settings[:2]
    if mode == "channel":
        diverging = cmap in grids.DIVERGING
        return (cmap, None, None, "-max|x|" if diverging else "channel min", "+max|x|" if diverging else "channel max")
    return (cmap, float(lo[0]) if len(lo) else None, float(hi[0]) if len(hi) else None, None, None)


def _draw_ahead(acts: dict[str, np.ndarray], view: GridView, run_path: str, ckpt: tuple, image_key: str,
                image: np.ndarray) -> dict[tuple, str]:
    """The grid page's grid and channel view of ``view`` at ``ckpt``, keyed like grid_html / channel_view_html."""
    from core.render import grids

    maps = grids.channel_maps(acts[view.layer])
    summary = grids.channel_summary(maps)
    lo, hi = grid_scales(summary, view.settings)
    cmap, alpha = view.settings[1], view.settings[7]
    out = {("grid", run_path, ckpt, image_key, view.layer, view.settings): _draw_grid(maps, view.settings, image,
                                                                                       summary)}
    if 0 <= view.channel < len(maps):
        scale = (float(lo[view.channel]), float(hi[view.channel]), cmap, view.view_px, alpha)
        out[("view", run_path, ckpt, image_key, view.layer, view.channel, scale)] = _draw_view(
            maps[view.channel], scale, image)
    return out
