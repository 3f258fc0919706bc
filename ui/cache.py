"""All Streamlit caching lives here; cached functions take plain keys (paths, mtimes, identities, hashes)."""
from __future__ import annotations

import functools
import hashlib
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import streamlit as st

from core.engine.readahead import ReadAhead
from core.run.remote import is_url, list_remote_runs, open_remote_run
from core.run.runs import HISTORY, MANIFEST, PROBES, Checkpoint, Run, RunError, RunInfo, list_runs, open_run
from ui.memo import Memo, memo

__all__ = ["Memo", "memo"]  # re-exported: the memo decorator is part of this module's interface


def _keep_keras_session() -> None:
    """Stop Streamlit from calling ``keras.backend.clear_session()`` after every script run.

    Streamlit does it to free models built inside a script; here models live only in
    ``st.cache_resource``. Each call runs a full ``gc.collect`` and flushes TensorFlow's
    caches, so the next forward pass is much slower - on every rerun, i.e. every scrub step
    (bench/bench_internals.py measures both; tests/ui/test_canaries.py guards this replacement).
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


def forget_complete() -> None:
    """Forget which sweeps are complete on disk (their statistics are about to be recomputed)."""
    _COMPLETE.clear()


def mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:
        return 0


def dir_stamp(path: Path) -> tuple[int, int]:
    """A cheap key that changes when files are added to or replaced in a run."""
    ck = path / "checkpoints"
    return (mtime(path / MANIFEST), mtime(path / HISTORY) + mtime(ck))


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
        return mtime(run.architecture_path)
    except Exception:  # a broken manifest: the engine call reports it
        return 0


@st.cache_data(ttl=5, show_spinner=False)
def runs_list(root: str) -> list[RunInfo]:
    if is_url(root):  # object storage: one listing (core.run.remote)
        return list_remote_runs(root)
    return list_runs(root)


def run(root: str, name: str) -> Run:
    """Open a run by name (path-traversal safe); cheap, so not cached. A URL root opens a local mirror."""
    if is_url(root):
        return open_remote_run(root, name)
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

    eng = RunEngine(Run(run_path), trust=trust)
    eng.extractor.prepare()  # the page's first activations then wait for no trace
    return eng


@st.cache_data(show_spinner=False, max_entries=16)
def probe_set(run_path: str, probes_mtime: int) -> tuple[np.ndarray, np.ndarray]:
    """The run's probe set (recorded, else chosen in the app): x uint8 (N, H, W, C), y int64 (N,)."""
    from core.engine.engine import run_probe_set

    ps = run_probe_set(Run(run_path))
    return ps.images, ps.labels


@memo(64)  # the sidebar asks on every page run
def recorded_probe_count(run_path: str, probes_mtime: int) -> int | None:
    """Images in the run's recorded probe set (0: none recorded); None when probes.npz cannot be read."""
    try:
        return len(Run(run_path).probes()[0])
    except RunError:
        return None


def probes_mtime(run: Run) -> int:
    from core.run.probefiles import USER_PROBES

    return mtime(run.path / PROBES) + mtime(run.path / USER_PROBES)


def digest(data: bytes) -> str:
    """Short content hash used as the key of uploaded bytes."""
    return hashlib.sha256(data).hexdigest()[:16]


@st.cache_data(show_spinner=False, max_entries=64)
def decode_image(key: str, size: tuple[int, int], channels: int, _src: bytes | str,
                 fit: str = "crop") -> tuple[np.ndarray | None, str | None]:
    """(uint8 (H, W, C) image, None) or (None, the ImageError message) for an upload or a file.

    ``key`` identifies ``_src``: the content hash of uploaded bytes, or path + mtime of a file;
    ``fit``: how it is fitted to ``size`` (``core.run.images.FITS``).
    """
    from core.run.images import ImageError, load_probe_image

    try:
        return load_probe_image(_src, size, channels=1 if channels == 1 else 3, fit=fit), None
    except ImageError as e:
        return None, str(e)


@st.cache_data(show_spinner=False, max_entries=32)
def image_png(key: str, _pixels: np.ndarray) -> bytes:
    """uint8 (H, W, C) image as PNG bytes (``key``: a digest of the pixels); not re-encoded on every rerun."""
    return encode_png(_pixels)


def encode_png(pixels: np.ndarray) -> bytes:
    from core.render import grids

    return grids.to_png(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels)


#: Entries of ``image_activations``: at 224 px all taps of one image are ~170 MB.
ACTIVATION_ENTRIES = 4


@memo(1)
def read_ahead_state() -> ReadAhead:
    """The process's read-ahead (``core.engine.readahead``): its results and drawings."""
    return ReadAhead(ACTIVATION_ENTRIES)


def activations_key(run_path: str, arch: int, ckpt: tuple, image_key: str, trust: bool) -> tuple:
    return (run_path, arch, ckpt, image_key, trust)


def compute_activations(eng, ckpt: tuple, image: np.ndarray) -> dict[str, np.ndarray]:
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
    acts = read_ahead_state().take(activations_key(run_path, arch, ckpt, image_key, trust))
    return acts if acts is not None else compute_activations(engine(run_path, arch, trust), ckpt, _image)


def read_ahead_idle() -> bool:
    """No read-ahead work running (benchmarks and tests wait for this)."""
    return read_ahead_state().idle()


@memo(64)
def image_layer(run_path: str, arch: int, ckpt: tuple, image_key: str, layer: str, trust: bool,
                _image: np.ndarray) -> np.ndarray:
    """One tap of one probe image at one checkpoint: (1, ...) read-only (scrubbing keeps these).

    From ``image_activations`` when they are computed ahead or lately; else, once the tap's
    one-tap extractor is built (in the background, the first time), only this tap is computed
    from only the weights it depends on (``RunEngine.tap_activations``).
    """
    key = activations_key(run_path, arch, ckpt, image_key, trust)
    ahead = read_ahead_state()
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
        pkey, kind = probe_key(run), "probes"
    else:
        pkey, kind = image_key, "image"
    key = (rp, stamp, pkey, trust, kind)
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
        return sweep_tables(rp, stamp, pkey, arch, trust)
    return image_sweep(rp, stamp, pkey, arch, trust, _image=image)


@st.cache_data(show_spinner=False, max_entries=16)
def _probe_key_cached(run_path: str, probes_mtime: int) -> str:
    return _probe_set_of(run_path).key


def probe_key(run: Run) -> str:
    return _probe_key_cached(str(run.path), probes_mtime(run))


@st.cache_data(show_spinner=False, max_entries=16)
def findings(run_path: str, ckpt_stamp: tuple, probe_key: str, hist_stamp: tuple, arch: int = 0,
             trust: bool = False) -> list:
    """Findings of ``core.analysis.diagnose.diagnose`` for the run's probe-set sweep."""
    from core.analysis.diagnose import diagnose

    from core.analysis.diagnose import thresholds_for

    result = sweep_tables(run_path, ckpt_stamp, probe_key, arch, trust)
    hist, _ = history(run_path, hist_stamp)
    run = Run(run_path)
    return list(diagnose(result, hist, run.manifest, thresholds_for(run)))


@st.cache_data(show_spinner=False, max_entries=512)
def chart_spec(name: str, deps: tuple, _build: Callable[[], Any]) -> dict:
    """The Vega-Lite spec (data inline) of chart ``name`` built by ``_build() -> (chart, table)``.

    ``deps`` must hold every plain value the chart depends on (run path, checkpoint stamp,
    probe key, layer, options): building and validating an Altair chart is slow,
    so reruns that do not change a chart's inputs reuse its spec.
    """
    chart, _ = _build()
    return chart.to_dict(validate=False)
