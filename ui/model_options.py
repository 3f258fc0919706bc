"""Sidebar "Model options" for any run: trust, custom objects, pixel scaling, the probe set of a run without one.

Called once per page from ``ui.state.sidebar`` (``check_model`` before the page draws anything
that needs the model, ``options`` at the end of the sidebar).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from core.run.runs import PROBES, Run, RunError
from ui import cache, grid_cache
from ui.memo import Memo, memo


def _key(run: Run, name: str) -> str:
    return f"_mo_{name}:{run.name}"


def _has_python_code(run: Run) -> bool:
    """Whether the architecture holds Lambda code (then loading it needs the user's trust)."""
    try:
        p = run.architecture_path
    except RunError:
        return False  # the engine's own load reports a broken manifest
    return _file_has_python_code(str(p), cache.arch_mtime(run))


@memo(64)  # every page run asks; walking a large model's config costs milliseconds
def _file_has_python_code(path: str, mtime: int) -> bool:
    from core.run.loading import H5_EXTS, unsafe_parts

    p = Path(path)
    try:
        if p.name.endswith(H5_EXTS):
            import h5py

            with h5py.File(p, "r") as f:
                raw = f.attrs.get("model_config")
            config = json.loads(raw.decode() if isinstance(raw, bytes) else raw or "{}")
        else:
            with zipfile.ZipFile(p) as z:
                config = json.loads(z.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, RunError):
        return False  # the engine's own load reports a damaged file
    return bool(unsafe_parts(config))


def _foreign(run: Run) -> bool:
    """A run of a model this app did not build: imported, or recorded with custom objects."""
    return run.manifest.external_checkpoints is not None or bool(run.manifest.raw.get("custom_objects"))


def check_model(run: Run, trust: bool) -> None:
    """Show the trust box up front for a model with Python code; stop the page with a message when the
    model cannot be loaded (untrusted code, a missing custom object, damage), so no page raises."""
    from core.run.loading import ModelLoadError, UnsafeModelError

    code = _has_python_code(run)
    if not (code or _foreign(run)):
        return  # the app's own runs load in safe mode without help; pages report their own errors
    if code and not st.session_state.get(f"_needs_trust:{run.name}"):
        st.session_state[f"_needs_trust:{run.name}"] = True
        st.rerun()  # the sidebar then shows the "I trust this file" box
    try:
        eng = cache.engine(str(run.path), cache.arch_mtime(run), trust)
    except UnsafeModelError as e:
        st.warning(f"{e}\n\nTick **I trust this file** in the sidebar if you know where this model comes from; "
                   "its code then runs inside this app.")
        _custom_objects_box(run, trust)
        st.stop()
    except (ModelLoadError, RunError, ValueError, OSError) as e:
        st.error(f"The architecture of this run could not be loaded: {e}")
        _custom_objects_box(run, trust)
        st.stop()


def model_notes(run: Run, trust: bool) -> None:
    """On the Overview, once: the run's pixel scaling (a guess says so) and what was left out of the model."""
    from core.run.loading import ModelLoadError
    from core.run.preprocess import PreprocessSpec

    try:
        spec = PreprocessSpec.from_dict(run.manifest.preprocessing)
        (st.warning if spec.is_guess else st.caption)(f"Pixel scaling: {spec.describe()}. Change it under "
                                                      "Pixel scaling in the sidebar.")
    except ValueError as e:
        st.error(f"Pixel scaling in the manifest is invalid: {e}")
    if not _foreign(run):
        return
    try:
        dropped = cache.engine(str(run.path), cache.arch_mtime(run), trust).dropped
    except (ModelLoadError, RunError, ValueError, OSError):
        return  # said where the model is needed
    if dropped:
        st.info("Left out of the model because their code is not here (training-only: initial values, "
                "penalties, constraints; the forward pass does not use them): " + ", ".join(dropped))


def _custom_objects_box(run: Run, trust: bool) -> None:
    """A field for the module or .py file defining the model's custom layers (runs that code: needs trust)."""
    from core.run.custom_objects import CustomObjectsError, load_custom_objects

    box = st.sidebar.expander("Custom objects", expanded=True)
    source = box.text_input("Python file or module defining the model's custom layers",
                            key=_key(run, "custom"), help="Its code runs in this app: tick I trust this file first.")
    if not source:
        return
    if not trust:
        st.session_state[f"_needs_trust:{run.name}"] = True
        box.warning("Loading that code runs it: tick **I trust this file** first.")
        return
    if box.button("Load", key=_key(run, "custom_load")):
        import keras

        try:
            objects = load_custom_objects(source, trust=True)
        except CustomObjectsError as e:
            box.error(str(e))
            return
        # registered for this app process: the next load of the model finds them
        keras.saving.get_custom_objects().update(objects.objects)
        st.rerun()


def _clear_statistics() -> None:
    """Forget every cached statistic of this process (the pixel scaling of a run changed)."""
    st.cache_data.clear()
    cache.forget_complete()
    for module in (cache, grid_cache):
        for value in vars(module).values():
            if isinstance(value, Memo):
                value.clear()


def _scaling_box(run: Run) -> None:
    from core.run.preprocess import CLI_HELP, PreprocessSpec

    try:
        spec = PreprocessSpec.from_dict(Run(run.path).manifest.preprocessing)
    except ValueError as e:
        st.sidebar.error(f"Pixel scaling in the manifest is invalid: {e}")
        spec = None
    box = st.sidebar.expander("Pixel scaling", expanded=bool(spec is not None and spec.is_guess))
    if spec is not None:
        (box.warning if spec.is_guess else box.caption)(f"Pixel scaling: {spec.describe()}")
    box.text_input("Change it to", key=_key(run, "scaling"), help=CLI_HELP, placeholder="e.g. scale01")
    box.button("Apply", key=_key(run, "scaling_apply"), on_click=_apply_scaling, args=(run,))
    error = st.session_state.pop(_key(run, "scaling_error"), None)
    if error:
        box.error(f"Not changed: {error}")


def _apply_scaling(run: Run) -> None:
    """on_click of Apply: record the typed scaling in the run's manifest and forget the old statistics."""
    from core.run.preprocess import PreprocessSpec, set_run_preprocessing

    text = st.session_state.get(_key(run, "scaling")) or ""
    try:
        set_run_preprocessing(run.path, PreprocessSpec.parse(text))
    except (ValueError, OSError) as e:
        st.session_state[_key(run, "scaling_error")] = str(e)
        return
    _clear_statistics()


def _probe_set_box(run: Run, image: Any) -> None:
    """For a run without a recorded probe set: the sidebar image serves as its probe set; more can be chosen."""
    from core.run.probefiles import user_probes

    if cache.recorded_probe_count(str(run.path), cache.mtime(run.path / PROBES)) != 0:
        return  # recorded ones, or a damaged probes.npz (the pages report it)
    chosen = user_probes(run.path, run.manifest.input_shape)
    if image is None and chosen is None:
        image = _first_photo(run)
    box = st.sidebar.expander("Probe set", expanded=chosen is None)
    if chosen is None and image is not None:
        _save(run, image.pixels[None], box)
        return
    n = 0 if chosen is None else len(chosen[0])
    box.caption(f"This run records no probe set; {n} image(s) chosen here serve as one (stored beside the "
                "run, its own files unchanged).")
    if image is None:
        return
    box.button("Use the sidebar image as this run's probe set", key=_key(run, "use"), on_click=_save,
               args=(run, image.pixels[None]))
    if chosen is not None and not any(np.array_equal(image.pixels, c) for c in chosen[0]):
        box.button("Add the sidebar image", key=_key(run, "add"), on_click=_save,
                   args=(run, np.concatenate([chosen[0], image.pixels[None]])))


def _first_photo(run: Run) -> Any:
    """The first built-in photo at the run's input size, as a stand-in probe image."""
    from types import SimpleNamespace

    from ui import state

    pics = state.photos()
    if not pics:
        return None
    m = run.manifest
    px, err = cache.decode_image(f"photo:{pics[0].name}:{cache.mtime(pics[0])}",
                                 (m.input_height, m.input_width), m.input_channels, str(pics[0]))
    return None if err else SimpleNamespace(pixels=px)


def _save(run: Run, x: np.ndarray, box: Any = None) -> None:
    from core.run.probefiles import ProbeFilesError, save_user_probes

    try:
        save_user_probes(run.path, x, np.full(len(x), -1, np.int64))
    except (ProbeFilesError, OSError) as e:
        (box or st.sidebar).warning(f"The probe set could not be stored beside the run ({e}); pages that need "
                                    "one say so.")


def fit_of(run: Run) -> str:
    """How uploaded and built-in images are fitted to the run's input: the user's choice, else the run's."""
    from core.run.images import FITS, default_fit

    chosen = st.session_state.get(_key(run, "fit"))
    return chosen if chosen in FITS else default_fit(run.manifest.raw, run.manifest.external_checkpoints is not None)


def fit_suffix(fit: str) -> str:
    """Part of an image's cache key that tells fittings apart (empty for crop, the historical one)."""
    return "" if fit == "crop" else f"@{fit}"


def _fit_box(run: Run) -> None:
    from core.run.images import FITS

    labels = {"resize": "Resize (stretch, as tf.image.resize)", "crop": "Centre crop", "pad": "Pad (letterbox)"}
    cur = fit_of(run)
    st.session_state.setdefault(_key(run, "fit"), cur)
    st.sidebar.selectbox("Fit uploaded and built-in images by", FITS, key=_key(run, "fit"),
                         format_func=labels.get, help="Keras input pipelines (image_dataset_from_directory) "
                                                      "resize; the built-in trainer's images need no fitting.")


def options(run: Run, image: Any) -> None:
    """The sidebar's model options: image fitting, pixel scaling and, for a run without one, its probe set."""
    _fit_box(run)
    _scaling_box(run)
    _probe_set_box(run, image)
