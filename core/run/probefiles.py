"""Probe sets from image files or folders (labels from sub-folder names), and a run's user-chosen probe set.

A run's recorded probe set (``probes.npz``) belongs to its producer. Images a user picks later
for a run without one are stored beside it as ``probes.user.npz``; the producer's files are
never changed.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.run.atomic import atomic_save_npz
from core.run.images import ImageError, load_probe_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
USER_PROBES = "probes.user.npz"
MAX_PROBES = 256


class ProbeFilesError(ValueError):
    """The probe images cannot be used; the message names the file or folder and what to do."""


@dataclass(frozen=True)
class ProbeFiles:
    """Probe images fitted to a model input: ``x`` uint8 (N, H, W, C), ``y`` int64 (N,) (-1: no label),
    ``class_names`` from sub-folder names (empty without sub-folders), ``files`` in order."""

    x: np.ndarray
    y: np.ndarray
    class_names: tuple[str, ...]
    files: tuple[Path, ...]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def collect_probe_files(sources: Sequence[Path]) -> tuple[list[tuple[Path, str | None]], tuple[str, ...]]:
    """(file, class folder or None) for image files and folders; a folder's sub-folders are classes."""
    found: list[tuple[Path, str | None]] = []
    classes: list[str] = []
    for src in map(Path, sources):
        if src.is_file():
            found.append((src, None))
            continue
        if not src.is_dir():
            raise ProbeFilesError(f"{src}: no such file or folder")
        subs = sorted(d for d in src.iterdir() if d.is_dir() and not d.name.startswith("."))
        found += [(p, None) for p in _images_in(src)]
        for d in subs:
            images = _images_in(d)
            if images:
                classes.append(d.name)
                found += [(p, d.name) for p in images]
        if not any(f.is_relative_to(src) for f, _ in found):
            raise ProbeFilesError(f"{src}: no images in this folder or its sub-folders "
                                  f"(looked for {', '.join(IMAGE_SUFFIXES)})")
    if not found:
        raise ProbeFilesError("no probe images given")
    if len(found) > MAX_PROBES:
        raise ProbeFilesError(f"{len(found)} probe images; at most {MAX_PROBES} (a few dozen is plenty)")
    return found, tuple(dict.fromkeys(classes))


def load_probe_files(sources: Sequence[Path], shape: tuple[int, int, int], fit: str,
                     class_names: Sequence[str] = ()) -> ProbeFiles:
    """Every image of ``sources`` fitted to ``shape`` (H, W, C); labels are the sub-folders' class indices
    (in ``class_names`` when given, else in sorted folder order, as ``image_dataset_from_directory``)."""
    files, folders = collect_probe_files(sources)
    names = tuple(class_names) or folders
    unknown = sorted({c for _, c in files if c is not None and c not in names})
    if unknown:
        raise ProbeFilesError(f"sub-folders {unknown} are not among the class names {list(names)[:20]}")
    h, w, c = shape
    images, problems = [], []
    for p, _ in files:
        try:
            images.append(load_probe_image(p, (h, w), channels=1 if c == 1 else 3, fit=fit))
        except ImageError as e:
            problems.append(f"{p}: {e}")
    if problems:
        raise ProbeFilesError("some probe images cannot be used; nothing was written:\n  " + "\n  ".join(problems))
    y = np.array([names.index(cls) if cls is not None else -1 for _, cls in files], np.int64)
    return ProbeFiles(np.stack(images).astype(np.uint8), y, folders, tuple(p for p, _ in files))


def save_user_probes(run_path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """Store a probe set chosen in the app for a run without one (atomic); returns its path."""
    x = np.asarray(x, np.uint8)
    if x.ndim != 4 or len(x) == 0 or len(np.asarray(y)) != len(x):
        raise ProbeFilesError(f"a probe set needs images (N, H, W, C) and N labels, got {x.shape}")
    p = Path(run_path) / USER_PROBES
    atomic_save_npz(p, {"x": x, "y": np.asarray(y, np.int64)})
    return p


def user_probes(run_path: Path, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """The user-chosen probe set of a run, or None; a damaged or mis-sized file counts as none."""
    p = Path(run_path) / USER_PROBES
    if not p.is_file():
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            x, y = np.asarray(z["x"]), np.asarray(z["y"]).astype(np.int64)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None
    if x.ndim != 4 or x.shape[1:] != tuple(shape) or len(y) != len(x):
        return None
    return x, y
