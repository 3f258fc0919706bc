"""Keras 3 weights files read straight from their datasets, by the layout Keras loads them in."""
from __future__ import annotations

import hashlib
import io
import json
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras
import numpy as np

from core.run.atomic import atomic_write_text

#: architecture -> {datasets of a Keras 3 weights file: the dataset each of ``architecture.weights`` is
#: loaded from, or None when that cannot be learnt (``_learn_layout``)}
LAYOUTS: "weakref.WeakKeyDictionary[keras.Model, dict[tuple, tuple[str, ...] | None]]" = weakref.WeakKeyDictionary()
#: architecture -> what its layouts' names on disk depend on
_IDENTITY: "weakref.WeakKeyDictionary[keras.Model, str]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class H5Dataset:
    """One dataset of an HDF5 file: its path, shape, numpy dtype string and, when its values are stored
    as one contiguous run of bytes, where that run starts in the file (else None)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    offset: int | None


def h5_datasets(data: bytes) -> list[H5Dataset]:
    """Every dataset of an HDF5 file (its bytes) in h5py's visiting order; OSError if the bytes are not HDF5.

    HDF5's own walk: h5py's ``visititems`` builds a Python object per group and dataset, which
    for a file of a few hundred variables costs several times reading their values.
    """
    with h5py.File(io.BytesIO(data), "r") as f:
        names: list[bytes] = []
        h5py.h5o.visit(f.id, lambda n, info: names.append(n) if info.type == h5py.h5o.TYPE_DATASET else None,
                       info=True)
        out = []
        for n in names:
            d = h5py.h5d.open(f.id, n)
            dt, shape = d.dtype, tuple(int(x) for x in d.shape)
            offset = d.get_offset()
            plain = (offset is not None and dt.kind in "biuf" and dt.fields is None
                     and d.get_storage_size() == int(np.prod(shape, dtype=np.int64)) * dt.itemsize)
            out.append(H5Dataset(n.decode(), shape, dt.str, int(offset) if plain else None))
    return out


def layout_known(datasets: list[H5Dataset], architecture: keras.Model) -> bool:
    """Whether ``read_by_layout`` knows how Keras loads files with ``datasets`` into ``architecture``
    (learnt in this process, or kept by an earlier one), so reads them without Keras."""
    names = [(d.name, d.shape, d.dtype) for d in datasets]
    known = LAYOUTS.get(architecture, {})
    if tuple(names) in known:
        return known[tuple(names)] is not None
    return _stored_layout(architecture, names) is not None


def read_by_layout(data: bytes, datasets: list[H5Dataset], architecture: keras.Model, target: keras.Model,
                   tmp: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a Keras 3 weights file (its bytes and ``h5_datasets``) read straight from its
    datasets, by the layout Keras loads them in; None when it cannot be learnt. Keras walks every
    layer's attributes to load a file: several times the time of reading its datasets (the
    caller serialises Keras loads)."""
    names = [(d.name, d.shape, d.dtype) for d in datasets]
    known = LAYOUTS.setdefault(architecture, {})
    key = tuple(names)
    if key not in known:
        layout = _stored_layout(architecture, names)
        if layout is None:
            layout = _learn_layout(data, names, architecture, target, tmp)
            if layout is not None:
                _store_layout(architecture, names, layout)
        known[key] = layout
    layout = known[key]
    if layout is None:
        return None
    by_name = {d.name: d for d in datasets}
    out: dict[str, np.ndarray] = {}
    f = None
    try:
        for v, n in zip(architecture.weights, layout):
            d = by_name[n]
            if d.offset is not None:
                a = np.frombuffer(data, np.dtype(d.dtype), int(np.prod(d.shape, dtype=np.int64)), d.offset)
                out[v.path] = np.array(a.reshape(d.shape), dtype=v.dtype)  # a copy: the bytes are read-only
            else:
                f = f or h5py.File(io.BytesIO(data), "r")
                out[v.path] = np.array(f[n][()], dtype=v.dtype)
    finally:
        if f is not None:
            f.close()
    return out


def _learn_layout(data: bytes, names: list[tuple[str, tuple[int, ...], str]], architecture: keras.Model,
                  target: keras.Model, tmp: Path) -> tuple[str, ...] | None:
    """The dataset of each of ``architecture.weights``: Keras loads a copy of the file whose dataset k
    holds the value k everywhere into ``target`` (``architecture`` or its private copy), and each
    variable then names its dataset. None unless every variable holds one such value of its
    dataset's shape (a layer that transforms what it loads, integer weights...)."""
    if len(names) >= 2 ** 24 or any(np.dtype(d).kind not in "fiu" or np.dtype(d).itemsize < 4
                                    for _n, _s, d in names):
        return None  # marker values must be exact in every dataset
    marked = tmp / "marked.weights.h5"
    marked.write_bytes(data)
    try:
        with h5py.File(marked, "r+") as f:
            for k, (n, shape, dtype) in enumerate(names):
                f[n][...] = np.full(shape, k, dtype)  # a whole array: a scalar is broadcast slowly
        target.load_weights(marked)
    except Exception:  # noqa: BLE001 - Keras' own load then reports why the file does not fit
        return None
    layout = []
    for a, v in zip(architecture.weights, target.weights):
        got = np.asarray(v.numpy())
        k = int(got.flat[0]) if got.size and float(got.flat[0]).is_integer() else -1
        if not 0 <= k < len(names) or (got != k).any() or names[k][1] != tuple(a.shape):
            return None
        layout.append(names[k][0])
    return tuple(layout) if len(set(layout)) == len(layout) else None


# ---- layouts kept between processes -------------------------------------------------------------
# Learning a layout costs a Keras load; a run's checkpoints are read again by every new process
# (the app, each CLI command), so what import learnt is kept in the user's cache.


def layout_cache_dir() -> Path | None:
    """``$ADE_LAYOUT_CACHE`` (empty: no cache), else ``$XDG_CACHE_HOME`` (or ~/.cache)/activation-dynamics/layouts."""
    env = os.environ.get("ADE_LAYOUT_CACHE")
    if env is not None:
        return Path(env) if env else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "activation-dynamics" / "layouts"


def _layout_file(architecture: keras.Model, names: list[tuple[str, tuple[int, ...], str]]) -> Path | None:
    """Where the layout of files with datasets ``names`` for ``architecture`` is kept; None if nowhere.

    Named by everything Keras' loading depends on: its version, the architecture's layers (classes,
    names, nesting) and variables (paths, shapes, order), and the file's datasets.
    """
    folder = layout_cache_dir()
    if folder is None:
        return None
    if architecture not in _IDENTITY:
        _IDENTITY[architecture] = json.dumps(
            [keras.__version__, [(type(layer).__module__, type(layer).__qualname__, layer.name)
                                 for layer in _all_layers(architecture)],
             [(v.path, tuple(v.shape), str(v.dtype)) for v in architecture.weights]])
    identity = _IDENTITY[architecture]
    h = hashlib.sha256(json.dumps([identity, names]).encode()).hexdigest()[:32]
    return folder / f"{h}.json"


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of ``model``, nested models' layers after their model, in order."""
    out = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(_all_layers(layer))
    return out


def _stored_layout(architecture: keras.Model, names: list[tuple[str, tuple[int, ...], str]]
                   ) -> tuple[str, ...] | None:
    """A layout kept by ``_store_layout``, if any and if it still fits (every variable a dataset of its shape)."""
    path = _layout_file(architecture, names)
    try:
        layout = json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None
    shapes = {n: s for n, s, _d in names}
    if (not isinstance(layout, list) or len(layout) != len(architecture.weights) or len(set(layout)) != len(layout)
            or any(shapes.get(n) != tuple(v.shape) for n, v in zip(layout, architecture.weights))):
        return None
    return tuple(layout)


def _store_layout(architecture: keras.Model, names: list[tuple[str, tuple[int, ...], str]],
                  layout: tuple[str, ...]) -> None:
    path = _layout_file(architecture, names)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(list(layout)))
    except OSError:
        pass  # a cache only: the next process learns the layout again

