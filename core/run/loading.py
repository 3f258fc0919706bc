"""Load model and weights files safely: detect Lambda code before loading, explain every refusal."""
from __future__ import annotations

import json
import shutil
import tempfile
import threading
import weakref
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import keras
import numpy as np

from core.run.custom_objects import (CUSTOM_OBJECTS_HINT, CustomObjects, missing_object, strip_training_only,
                                     zero_initializers)
import core.run.keras_objects  # noqa: F401  registers the classes saved runs name, before any load
from core.run.weightlayout import H5Dataset, h5_datasets, layout_known, read_by_layout

TRUST_HINT = ("Only load files you trust: pass --trust-code on the command line or tick "
              "\"I trust this file\" in the app.")
KERAS_EXT = ".keras"
WEIGHTS_EXT = ".weights.h5"
H5_EXTS = (".h5", ".hdf5")
_VARS = "model.weights.h5"  # the weights inside a .keras archive

# Keras-level cloning and weight loading touch process-wide naming state; keep them serial.
_LOCK = threading.Lock()
_CLONES: "weakref.WeakKeyDictionary[keras.Model, keras.Model]" = weakref.WeakKeyDictionary()


class ModelLoadError(ValueError):
    """A model or weights file cannot be used; the message says why and what to do."""


class UnsafeModelError(ModelLoadError):
    """The file holds Python code (Lambda layers) that would run on load and the user did not trust it."""


# ---- file inspection ------------------------------------------------------------------------------


def _walk_layers(cfg: Any, owner: str | None = None) -> Iterator[tuple[str, str]]:
    """(class_name, layer name) for every serialised object in a Keras config, nested models included."""
    if isinstance(cfg, dict):
        cls = cfg.get("class_name")
        inner = cfg.get("config")
        name = cfg.get("name") or (inner.get("name") if isinstance(inner, dict) else None) or owner
        if isinstance(cls, str):
            yield cls, str(name)
        for v in cfg.values():
            yield from _walk_layers(v, name if isinstance(cls, str) else owner)
    elif isinstance(cfg, list):
        for v in cfg:
            yield from _walk_layers(v, owner)


def unsafe_parts(config: Any) -> list[str]:
    """Names of Lambda layers (and layers holding serialised Python lambdas) in a model config."""
    found = []
    for cls, name in _walk_layers(config):
        if cls == "Lambda":
            found.append(name)
        elif cls == "__lambda__":
            found.append(f"{name} (Python lambda)")
    return list(dict.fromkeys(found))


def _layer_names(config: Any) -> set[str]:
    """Names of every layer in a (possibly nested) functional/sequential config."""
    names: set[str] = set()

    def visit(cfg: Any) -> None:
        if isinstance(cfg, dict):
            layers = cfg.get("config", {}).get("layers") if isinstance(cfg.get("config"), dict) else None
            for layer in layers or []:
                if isinstance(layer, dict):
                    n = layer.get("name") or layer.get("config", {}).get("name")
                    if n:
                        names.add(str(n))
                    visit(layer)

    visit(config)
    return names


def _decode(v: Any) -> str:
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _open_h5(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read this HDF5 file; it is truncated or corrupt ({e})") from e


def _read_keras_zip(path: Path) -> tuple[dict, dict]:
    """(config.json, metadata.json) of a Keras 3 ``.keras`` archive."""
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
            metadata = json.loads(z.read("metadata.json")) if "metadata.json" in z.namelist() else {}
            return config, metadata
    except (zipfile.BadZipFile, EOFError) as e:
        raise ModelLoadError(f"{path}: not a valid .keras archive; the file is truncated or corrupt ({e})") from e
    except KeyError as e:
        raise ModelLoadError(f"{path}: .keras archive without config.json; truncated or not a Keras 3 file") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: config.json inside the .keras archive is corrupt ({e})") from e


def _h5_model_config(f: h5py.File) -> dict | None:
    raw = f.attrs.get("model_config")
    if raw is None:
        return None
    try:
        return json.loads(_decode(raw))
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{f.filename}: the model_config stored in the file is corrupt ({e})") from e


def file_kind(path: str | Path) -> str:
    """``keras-model`` | ``keras-weights`` | ``h5-model`` | ``h5-weights`` | ``savedmodel`` (manifest vocabulary).

    Raises ModelLoadError for a missing, unreadable or unrecognised file.
    """
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"{p}: no such file")
    if p.is_dir():
        if (p / "saved_model.pb").exists():
            return "savedmodel"
        raise ModelLoadError(f"{p}: is a folder, not a model file (.keras, .h5, .weights.h5)")
    if p.name.endswith(KERAS_EXT) or zipfile.is_zipfile(p):
        _read_keras_zip(p)
        return "keras-model"
    if p.name.endswith(H5_EXTS) or h5py.is_hdf5(p):
        with _open_h5(p) as f:
            if "model_config" in f.attrs:
                return "h5-model"
            if "layer_names" in f.attrs or "model_weights" in f:
                return "h5-weights"
            if "layers" in f or p.name.endswith(WEIGHTS_EXT):
                return "keras-weights"
        raise ModelLoadError(f"{p}: an HDF5 file but neither a Keras model nor Keras weights")
    raise ModelLoadError(f"{p}: unrecognised format; expected .keras, .h5/.hdf5 or .weights.h5")


# ---- loading models ---------------------------------------------------------------------------------


def _refuse_unsafe(path: Path, parts: list[str]) -> None:
    raise UnsafeModelError(
        f"{path}: the file contains Lambda layers whose Python code would run on load: "
        f"{', '.join(parts)}. {TRUST_HINT}")


def _explain_load_failure(path: Path, e: Exception, has_lambda: bool,
                          custom: CustomObjects | None = None) -> ModelLoadError:
    text = f"{type(e).__name__}: {e}"
    if "safe_mode" in str(e) or "unsafe_deserialization" in str(e):
        return UnsafeModelError(f"{path}: the file contains Python code that Keras refuses in safe mode "
                                f"({e}). {TRUST_HINT}")
    if has_lambda and isinstance(e, (EOFError, ValueError, TypeError, SystemError)):
        return ModelLoadError(
            f"{path}: the Lambda layers' Python bytecode could not be rebuilt ({text}). Lambda code only "
            "loads in the Python version that saved it. Rebuild the architecture in code (without Lambda "
            "layers), then read this file's weights into it with read_weights_file, or re-save the model "
            "from its original environment.")
    name = missing_object(str(e))
    if name is not None:
        where = (f"{custom.source} does not define it: add it there" if custom is not None
                 else CUSTOM_OBJECTS_HINT)
        return ModelLoadError(f"{path}: the model needs {name!r} (a custom layer, activation or loss its "
                              f"forward pass uses), which is not available here; {where}.")
    return ModelLoadError(f"{path}: could not load the model ({text})")


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model and the training-only objects (initializers, regularizers, constraints) left out
    because they could not be rebuilt here; each reads ``layer.key = Name``."""

    model: keras.Model
    dropped: tuple[str, ...] = ()


def load_model_file(path: str | Path, trust: bool = False, compile: bool = False,
                    custom_objects: CustomObjects | None = None) -> keras.Model:
    """``load_model_noted(...).model``."""
    return load_model_noted(path, trust, compile, custom_objects).model


def load_model_noted(path: str | Path, trust: bool = False, compile: bool = False,
                     custom_objects: CustomObjects | None = None, weights: bool = True) -> LoadedModel:
    """Load a full model: Keras 3 ``.keras`` or legacy (Keras 2) ``.h5``/``.hdf5``.

    Lambda layers are detected before anything is deserialised; without ``trust`` they raise
    UnsafeModelError. ``safe_mode`` is on unless ``trust``. Initializers, regularizers and constraints
    Keras cannot rebuild (the user's code is absent) are left out of the config, no code runs for
    them; ``custom_objects`` (the user's code, loaded with trust) supply layers, activations and
    losses. ``weights=False``: a ``.keras`` model's variables are zeros instead of the file's values
    (for a caller that passes every checkpoint's weights in itself). Every failure is a ModelLoadError.
    """
    p = Path(path)
    kind = file_kind(p)
    if kind == "savedmodel":
        raise ModelLoadError(
            f"{p}: a TensorFlow SavedModel folder. Keras 3 loads it only as keras.layers.TFSMLayer, an "
            "opaque inference function without intermediate layers, so activations cannot be tapped. "
            "Re-save the model as .keras with model.save('model.keras') where it was built.")
    if kind in ("keras-weights", "h5-weights"):
        raise ModelLoadError(
            f"{p}: holds weights only, no architecture. An architecture file is needed (.keras or a full "
            ".h5 model); use this file as a checkpoint of that architecture (read_weights_file).")
    if kind == "keras-model":
        if not p.name.endswith(KERAS_EXT):
            raise ModelLoadError(f"{p}: a .keras archive with another extension; rename it to end in .keras")
        config, metadata = _read_keras_zip(p)
        if str(metadata.get("keras_version", "3")).startswith("2"):
            raise ModelLoadError(
                f"{p}: written by Keras {metadata['keras_version']} (tf_keras); Keras 3 cannot read that "
                ".keras variant. Re-save it as .h5 from the original environment.")
    else:
        if not p.name.endswith(H5_EXTS):
            raise ModelLoadError(f"{p}: an HDF5 model with another extension; rename it to end in .h5")
        with _open_h5(p) as f:
            config = _h5_model_config(f)
    parts = unsafe_parts(config)
    if parts and not trust:
        _refuse_unsafe(p, parts)
    objects = dict(custom_objects.objects) if custom_objects is not None else {}
    stripped, dropped = strip_training_only(config, objects)
    try:
        if dropped or (not weights and kind == "keras-model"):
            model = _load_stripped(p, kind, stripped, objects, trust, weights)
        else:
            model = keras.saving.load_model(p, compile=compile, safe_mode=not trust, custom_objects=objects or None)
    except Exception as e:  # noqa: BLE001 - every loader failure becomes one explained error type
        raise _explain_load_failure(p, e, bool(parts), custom_objects) from e
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{p}: loaded a {type(model).__name__}, not a Keras model")
    return LoadedModel(model, dropped)


def _load_stripped(p: Path, kind: str, config: dict, objects: dict[str, Any], trust: bool,
                   weights: bool = True) -> keras.Model:
    """The model of ``p`` built from ``config`` (a cleaned copy of its own), with the file's weights
    (a ``.keras`` model without them unless ``weights``)."""
    with tempfile.TemporaryDirectory(prefix="ade-load-") as tmp:
        if kind == "h5-model":  # the legacy loader reads the config from the file: a copy carries the new one
            copy = Path(tmp) / "model.h5"
            shutil.copyfile(p, copy)
            with h5py.File(copy, "r+") as f:
                f.attrs["model_config"] = json.dumps(config)
            return keras.saving.load_model(copy, compile=False, safe_mode=not trust, custom_objects=objects or None)
        config = {k: v for k, v in config.items() if k != "compile_config"}
        if not weights:
            config = zero_initializers(config)
        with keras.saving.custom_object_scope(objects):
            model = keras.saving.deserialize_keras_object(config, safe_mode=not trust)
        if weights:
            with zipfile.ZipFile(p) as z:
                if _VARS in z.namelist():
                    file = Path(tmp) / _VARS
                    file.write_bytes(z.read(_VARS))
                    model.load_weights(file)
        return model


# ---- reading foreign checkpoints ---------------------------------------------------------------


def _weighted_layers(model: keras.Model) -> dict[str, list[tuple[int, ...]]]:
    """Layer name -> variable shapes (trainable first, the legacy h5 order) for layers with weights."""
    out = {}
    for layer in model.layers:
        ws = layer.trainable_weights + layer.non_trainable_weights
        if ws:
            out[layer.name] = [tuple(w.shape) for w in ws]
    return out


def _legacy_group(f: h5py.File) -> h5py.Group:
    return f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f


def _check_legacy_names(path: Path, f: h5py.File, architecture: keras.Model) -> None:
    """Legacy h5 files keep layer and weight names: require the same weighted layers with the same shapes."""
    g = _legacy_group(f)
    saved = {}
    for name in (_decode(n) for n in g.attrs.get("layer_names", [])):
        weight_names = [_decode(w) for w in g[name].attrs.get("weight_names", [])] if name in g else []
        if weight_names:
            saved[name] = [tuple(g[name][w].shape) for w in weight_names]
    expected = _weighted_layers(architecture)
    problems = [f"{n}: missing from file" for n in expected if n not in saved]
    problems += [f"{n}: not in the architecture" for n in saved if n not in expected]
    problems += [f"{n}: shapes {saved[n]} in file, {expected[n]} expected" for n in expected
                 if n in saved and saved[n] != expected[n]]
    if problems:
        raise ModelLoadError(f"{path}: checkpoint from another architecture; mismatches: {problems[:20]}"
                             + (f" (+{len(problems) - 20} more)" if len(problems) > 20 else ""))


def _check_keras3_shapes(path: Path, datasets: list[H5Dataset], architecture: keras.Model) -> None:
    """Keras 3 weights files name layers by class and position only, so compare the shapes we can see."""
    layers = [d for d in datasets if d.name.startswith("layers/")]
    if not layers:
        return
    found = Counter(d.shape for d in layers)
    expected = Counter(tuple(w.shape) for w in architecture.weights)
    if found != expected:
        extra, missing = found - expected, expected - found
        raise ModelLoadError(
            f"{path}: checkpoint from another architecture; variable shapes differ "
            f"(in file only: {sorted(extra.elements())[:10]}, "
            f"expected but absent: {sorted(missing.elements())[:10]})")


def _keras3_datasets(path: Path, data: bytes, architecture: keras.Model) -> list[H5Dataset]:
    """The datasets of a Keras 3 weights file (its bytes), checked against ``architecture``."""
    try:
        datasets = h5_datasets(data)
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the weights in this file; it is truncated or corrupt ({e})") from e
    _check_keras3_shapes(path, datasets, architecture)
    return datasets


_WEIGHTED: "weakref.WeakKeyDictionary[keras.Model, dict[str, list[tuple[int, ...]]]]" = weakref.WeakKeyDictionary()


def _check_keras_zip(path: Path, architecture: keras.Model) -> bytes | None:
    """Check a ``.keras`` checkpoint's layers against ``architecture``; its weights file's bytes (None if it has none)."""
    config, _ = _read_keras_zip(path)
    in_file = _layer_names(config)
    weighted = _WEIGHTED.get(architecture)
    if weighted is None:
        weighted = _WEIGHTED[architecture] = _weighted_layers(architecture)
    missing = [n for n in weighted if n not in in_file]
    if missing:
        raise ModelLoadError(f"{path}: checkpoint from another architecture; layers with weights not in the "
                             f"file: {missing[:20]}")
    with zipfile.ZipFile(path) as z:
        if _VARS not in z.namelist():
            return None
        return z.read(_VARS)


def reads_directly(path: str | Path, architecture: keras.Model) -> bool:
    """Whether ``read_weights_file(path, architecture)`` reads the values straight from the file: a Keras 3
    weights file whose layout for ``architecture`` is known (in this process or kept on disk)."""
    p = Path(path)
    try:
        kind = file_kind(p)
        if kind == "keras-model":
            with zipfile.ZipFile(p) as z:
                data = z.read(_VARS) if _VARS in z.namelist() else None
        else:
            data = p.read_bytes() if kind == "keras-weights" else None
        return data is not None and layout_known(h5_datasets(data), architecture)
    except (OSError, ValueError, zipfile.BadZipFile, ModelLoadError):
        return False


def _private_clone(architecture: keras.Model) -> keras.Model:
    """A copy whose variables we may overwrite; cached per architecture (caller holds _LOCK)."""
    clone = _CLONES.get(architecture)
    if clone is None:
        try:
            clone = keras.models.clone_model(architecture)
        except Exception:  # noqa: BLE001
            # Cloning re-deserialises Lambda layers, which safe mode refuses; the caller already
            # trusted this architecture, so borrow it (weights are restored after each read).
            return None
        _CLONES[architecture] = clone
    return clone


def read_weights_file(path: str | Path, architecture: keras.Model, overwrite: bool = False
                      ) -> dict[str, np.ndarray]:
    """Arrays of a foreign checkpoint keyed by the architecture's ``variable.path``.

    Accepts ``.weights.h5`` (Keras 3), legacy h5 weights, and full ``.keras``/``.h5`` models (their
    code is never deserialised, so Lambda layers are harmless here). Names/shapes are checked
    first because Keras matches weights by position and class; mismatches raise ModelLoadError.
    The file is loaded into a private copy of ``architecture``, or with ``overwrite`` into
    ``architecture`` itself, whose values are then undefined (no copy to build: for a caller
    that never reads the model's own values, e.g. one passing weights as arguments).
    """
    p = Path(path)
    kind = file_kind(p)
    if kind == "savedmodel":
        raise ModelLoadError(f"{p}: SavedModel folders are not readable as checkpoints; re-save as .keras")
    load_kwargs: dict[str, Any] = {}
    inner: bytes | None = None
    if kind == "keras-model":
        inner = _check_keras_zip(p, architecture)
    elif kind == "keras-weights":
        inner = p.read_bytes()
    else:
        with _open_h5(p) as f:
            _check_legacy_names(p, f, architecture)
            load_kwargs["by_name"] = True  # names verified; order in the file may differ
    datasets = _keras3_datasets(p, inner, architecture) if inner is not None else []
    # Keras picks the reader from the file name, so the name must match the content
    if kind == "keras-weights" and not p.name.endswith(WEIGHTS_EXT):
        raise ModelLoadError(f"{p}: Keras 3 weights must be named *{WEIGHTS_EXT} to be loaded")
    if kind == "keras-model" and not p.name.endswith(KERAS_EXT):
        raise ModelLoadError(f"{p}: a .keras archive must be named *{KERAS_EXT} to be loaded")
    if kind in ("h5-model", "h5-weights") and not p.name.endswith(H5_EXTS):
        raise ModelLoadError(f"{p}: legacy HDF5 weights must be named *.h5 to be loaded")
    with _LOCK, tempfile.TemporaryDirectory(prefix="ade-weights-") as tmp:
        target = architecture if overwrite else _private_clone(architecture)
        if target is not None and inner is not None:
            got = read_by_layout(inner, datasets, architecture, target, Path(tmp))
            if got is not None:
                return got
        p_load = p
        if kind == "keras-model" and inner is not None:
            # Keras reads a .keras archive's weights through the zip, checksumming every small read;
            # the same bytes as a file of their own load several times faster
            p_load = Path(tmp) / _VARS
            p_load.write_bytes(inner)
        if overwrite:
            return _read_into(p, p_load, architecture, load_kwargs, restore=False)
        clone = target
        if clone is None:
            return _read_into(p, p_load, architecture, load_kwargs, restore=True)
        try:
            clone.load_weights(p_load, **load_kwargs)
        except Exception as e:  # noqa: BLE001
            _CLONES.pop(architecture, None)  # possibly half-loaded; never reuse it
            raise ModelLoadError(f"{p}: weights do not fit architecture {architecture.name!r} "
                                 f"({type(e).__name__}: {e})") from e
        if [tuple(w.shape) for w in clone.weights] != [tuple(w.shape) for w in architecture.weights]:
            raise ModelLoadError(f"{p}: internal error: the copy of {architecture.name!r} does not match it")
        # key by the architecture's paths: the clone's variables line up with them one to one
        return {a.path: np.array(c.numpy()) for a, c in zip(architecture.weights, clone.weights)}


def _read_into(p: Path, p_load: Path, model: keras.Model, load_kwargs: dict[str, Any], restore: bool
               ) -> dict[str, np.ndarray]:
    """Load ``p`` (from ``p_load``, the same weights) into ``model`` itself; with ``restore`` its own
    values are put back afterwards (caller holds _LOCK).

    Safe for the engine, whose forward pass takes weights as arguments and never
    reads the model's own variables.
    """
    saved = [np.array(v.numpy()) for v in model.weights] if restore else []
    try:
        model.load_weights(p_load, **load_kwargs)
        return {v.path: np.array(v.numpy()) for v in model.weights}
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"{p}: weights do not fit architecture {model.name!r} "
                             f"({type(e).__name__}: {e})") from e
    finally:
        for v, a in zip(model.weights, saved):
            v.assign(a)


read_checkpoint_weights = read_weights_file  # name used in docs/ARCHITECTURE.md
