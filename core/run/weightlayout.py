"""Keras 3 weights files read straight from their datasets, by the layout Keras loads them in."""
from __future__ import annotations

import io
import weakref
from pathlib import Path

import h5py
import keras
import numpy as np

#: architecture -> {datasets of a Keras 3 weights file: the dataset each of ``architecture.weights`` is
#: loaded from, or None when that cannot be learnt (``_learn_layout``)}
LAYOUTS: "weakref.WeakKeyDictionary[keras.Model, dict[tuple, tuple[str, ...] | None]]" = weakref.WeakKeyDictionary()


def read_by_layout(data: bytes, architecture: keras.Model, target: keras.Model, tmp: Path
                   ) -> dict[str, np.ndarray] | None:
    """The arrays of a Keras 3 weights file (its bytes) read straight from its datasets, by the layout
    Keras loads them in; None when it cannot be learnt. Keras walks every layer's attributes to
    load a file: several times the time of reading its datasets (the caller serialises Keras loads)."""
    with h5py.File(io.BytesIO(data), "r") as f:
        names: list[tuple[str, tuple[int, ...], str]] = []
        f.visititems(lambda n, o: names.append((n, tuple(o.shape), o.dtype.str))
                     if isinstance(o, h5py.Dataset) else None)
        known = LAYOUTS.setdefault(architecture, {})
        key = tuple(names)
        if key not in known:
            known[key] = _learn_layout(data, names, architecture, target, tmp)
        layout = known[key]
        if layout is None:
            return None
        return {v.path: np.array(f[n][()], dtype=v.dtype) for v, n in zip(architecture.weights, layout)}


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
