"""Checkpoint files of a foreign training folder: which files, which mini-epoch each one is, the CSVLogger history."""
from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from core.run.runs import HISTORY_COLUMNS

CHECKPOINT_SUFFIXES = (".weights.h5", ".keras", ".h5", ".hdf5")
JSON_SUFFIX = ".json"
EPOCH_WORDS = ("epochs", "epoch", "ep")
CHECKPOINT_WORDS = ("checkpoint", "snapshot", "weights", "weight", "model", "ckpt", "cp")
_SEP = r"[\s_\-.=:#]*"
# (?<![a-z]): a word counts only at a word start, so "step" or "rep" never reads as "ep"
_EPOCH_WORD_RE = re.compile(rf"(?<![a-z])(?:{'|'.join(EPOCH_WORDS)}){_SEP}(\d+)", re.IGNORECASE)
_CHECKPOINT_WORD_RE = re.compile(rf"(?<![a-z])(?:{'|'.join(CHECKPOINT_WORDS)}){_SEP}(\d+)", re.IGNORECASE)
_NUMBER_RE = re.compile(r"\d+(?:\.\d+)?")
EPOCH_RULE = ("the number right after an epoch word (epoch, epochs, ep); else the number right after a "
              "checkpoint word (weights, model, ckpt, cp, checkpoint, snapshot); else the first integer "
              "in the name that is not part of a decimal such as 0.52 (extension removed)")

HISTORY_LOG_NAME = "training.log"
# CSVLogger writes whatever keys the logs hold; Keras 2 used acc/lr, Keras 3 accuracy/learning_rate
_HISTORY_ALIASES: dict[str, tuple[str, ...]] = {
    "loss": ("loss",), "accuracy": ("accuracy", "acc"), "val_loss": ("val_loss",),
    "val_accuracy": ("val_accuracy", "val_acc"), "lr": ("lr", "learning_rate"),
}
# tf.keras wrote TF-format checkpoints (x.ckpt.index + x.ckpt.data-00000-of-00001 + "checkpoint")
_TF_CKPT_INDEX = ".index"
_TF_CKPT_DATA_RE = re.compile(r"\.data-\d+-of-\d+$")
_TF_CKPT_BOOKKEEPING = "checkpoint"

# ---- file names --------------------------------------------------------------------------------


def checkpoint_stem(filename: str) -> str:
    """The file name without its checkpoint extension (``.weights.h5`` counts as one extension)."""
    lower = filename.lower()
    for suffix in CHECKPOINT_SUFFIXES:
        if lower.endswith(suffix):
            return filename[: -len(suffix)]
    return filename


def epoch_number(filename: str) -> int | None:
    """The epoch a checkpoint file name encodes, or None; see ``EPOCH_RULE``.

    ``weights.07-0.52.hdf5`` -> 7, ``model-003.h5`` -> 3, ``model_epoch=3.keras`` -> 3,
    ``weights-improvement-05-0.84.hdf5`` -> 5, ``best_model.h5`` -> None.
    """
    stem = _VERSION_RE.sub(" ", checkpoint_stem(filename))
    for pattern in (_EPOCH_WORD_RE, _CHECKPOINT_WORD_RE):
        m = pattern.search(stem)
        if m:
            return int(m.group(1))
    # metric values such as val_loss 0.52 are not epochs
    return next((int(m.group(0)) for m in _NUMBER_RE.finditer(stem) if "." not in m.group(0)), None)


def is_checkpoint_name(filename: str) -> bool:
    return filename.lower().endswith(CHECKPOINT_SUFFIXES)


def _classify(entry: Path) -> tuple[str, int | None, str]:
    """(``checkpoint`` | ``skip`` | ``ignore``, epoch, reason) for one folder entry."""
    name = entry.name
    if name.startswith("."):
        return "ignore", None, ""
    if entry.is_dir():
        if (entry / "saved_model.pb").exists():
            return "skip", None, ("a TensorFlow SavedModel folder; Keras 3 cannot reach its layers. Re-save "
                                  "the model as .keras (or its weights as .weights.h5) where it was trained")
        return "ignore", None, ""
    if is_checkpoint_name(name):
        k = epoch_number(name)
        if k is None:
            return "skip", None, f"no epoch number in the file name (rule: {EPOCH_RULE})"
        return "checkpoint", k, ""
    if name.endswith(_TF_CKPT_INDEX):
        return "skip", None, ("a TensorFlow-format checkpoint (tf.keras save_weights without .h5); Keras 3 "
                              "cannot read it. Re-save the weights as .weights.h5 or .h5")
    if _TF_CKPT_DATA_RE.search(name) or name == _TF_CKPT_BOOKKEEPING:
        return "ignore", None, ""  # reported once, through the .index file
    if name.lower().endswith((".csv", ".log", JSON_SUFFIX, ".txt", ".md")) or "tfevents" in name:
        return "ignore", None, ""  # logs and notes that usually sit beside checkpoints
    return "skip", None, f"not a Keras checkpoint (expected {', '.join(CHECKPOINT_SUFFIXES)})"


def scan_folder(src: Path) -> tuple[list[tuple[int, Path]], list[tuple[Path, str]]]:
    """Checkpoint candidates ``(epoch, path)`` and skipped ``(path, reason)`` in ``src`` (not recursive)."""
    found: list[tuple[int, Path]] = []
    skipped: list[tuple[Path, str]] = []
    for entry in sorted(src.iterdir()):
        what, k, reason = _classify(entry)
        if what == "checkpoint" and k is not None:
            found.append((k, entry))
        elif what == "skip":
            skipped.append((entry, reason))
    return found, skipped


def checkpoint_files(src: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files in ``src`` named like checkpoints (numbered or not) and skipped ``(path, reason)`` (not recursive)."""
    files: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for entry in sorted(src.iterdir()):
        what, _k, reason = _classify(entry)
        if what == "checkpoint" or (what == "skip" and entry.is_file() and is_checkpoint_name(entry.name)):
            files.append(entry)
        elif what == "skip":
            skipped.append((entry, reason))
    return files, skipped


def _newness(path: Path) -> tuple[int, str]:
    return (path.stat().st_mtime_ns, path.name)


def dedupe_epochs(found: Iterable[tuple[int, Path]],
                  newness: Callable[[Path], Any] = _newness) -> tuple[list[tuple[int, Path]], list[tuple[Path, str]]]:
    """One file per epoch (the newest; ties broken by name), sorted by epoch; the others reported."""
    by_epoch: dict[int, list[Path]] = {}
    for k, p in found:
        by_epoch.setdefault(k, []).append(p)
    kept: list[tuple[int, Path]] = []
    skipped: list[tuple[Path, str]] = []
    for k in sorted(by_epoch):
        paths = sorted(by_epoch[k], key=newness)
        kept.append((k, paths[-1]))
        skipped += [(p, f"another file for epoch {k}; kept the newer {paths[-1].name}") for p in paths[:-1]]
    return kept, skipped


# ---- Keras CSVLogger history ----------------------------------------------------------------------


def _delimiter(header_line: str) -> str | None:
    """The CSVLogger separator, if this header names an ``epoch`` column."""
    for sep in (",", ";", "\t"):
        if "epoch" in [c.strip() for c in header_line.split(sep)]:
            return sep
    return None


def find_history_log(src: Path) -> Path | None:
    """``training.log`` (CSVLogger's usual name) or else the first ``*.csv``/``*.log`` with an epoch column."""
    named = [src / HISTORY_LOG_NAME] if (src / HISTORY_LOG_NAME).is_file() else []
    others = sorted(p for p in src.iterdir()
                    if p.is_file() and p.suffix.lower() in (".csv", ".log") and p.name != HISTORY_LOG_NAME)
    for p in named + others:
        try:
            with p.open(encoding="utf-8", errors="replace") as f:
                if _delimiter(f.readline()) is not None:
                    return p
        except OSError:
            continue
    return None


def _float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def csvlogger_history(text: str) -> pd.DataFrame:
    """History rows from CSVLogger text: epoch e (0-based) becomes mini-epoch e+1.

    Rows whose epoch is not a number (a header repeated by ``append=True``) are dropped; for an
    epoch logged twice (a resumed training) the last row wins.
    """
    lines = text.splitlines()
    sep = _delimiter(lines[0]) if lines else None
    if sep is None:
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))
    rows: dict[int, dict[str, float]] = {}
    for rec in csv.DictReader(io.StringIO(text), delimiter=sep):
        rec = {(k or "").strip(): v for k, v in rec.items()}
        epoch = _float(rec.get("epoch"))
        if not math.isfinite(epoch) or epoch < 0 or epoch != int(epoch):
            continue
        row = {c: math.nan for c in HISTORY_COLUMNS}
        row["mini_epoch"] = int(epoch) + 1
        for col, names in _HISTORY_ALIASES.items():
            name = next((n for n in names if n in rec), None)
            if name is not None:
                row[col] = _float(rec[name])
        rows[int(epoch) + 1] = row
    df = pd.DataFrame([rows[k] for k in sorted(rows)], columns=list(HISTORY_COLUMNS))
    df["mini_epoch"] = df["mini_epoch"].astype("int64")
    return df


# ---- ordering ------------------------------------------------------------------------------------

ORDERS = ("number", "name", "mtime")
#: A number that names a version (v2, version 3) is never read as an epoch.
_VERSION_RE = re.compile(r"(?<![a-z])v(?:ersion)?[\s_\-.]*\d+(?:\.\d+)*", re.IGNORECASE)


def order_checkpoints(paths: list[Path], order: str) -> tuple[list[tuple[int, Path, str]], list[tuple[Path, str]]]:
    """((mini-epoch, file, how it was numbered) sorted by mini-epoch, skipped (file, reason)).

    ``number``: the epoch in each name (``EPOCH_RULE``); a lone file whose name has no epoch number
    becomes mini-epoch 1, and a lone file's number is only trusted after an epoch word (in
    ``model_v1_best.keras`` or ``resnet50_2.h5`` it may be a version). ``name`` / ``mtime``: files
    sorted by name / modification time are mini-epochs 1, 2, ... whatever their names say.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if order != "number":
        key = (lambda p: p.name) if order == "name" else (lambda p: (p.stat().st_mtime_ns, p.name))
        return [(i, p, f"{i}. by {order}") for i, p in enumerate(sorted(paths, key=key), start=1)], []
    if len(paths) == 1:
        p = paths[0]
        m = _EPOCH_WORD_RE.search(_VERSION_RE.sub(" ", checkpoint_stem(p.name)))
        if m:
            return [(int(m.group(1)), p, "epoch word")], []
        has_number = _NUMBER_RE.search(checkpoint_stem(p.name)) is not None
        return [(1, p, "the only file" + (" (the number in its name may be a version, not an epoch)"
                                          if has_number else ""))], []
    found, skipped = [], []
    for p in paths:
        k = epoch_number(p.name)
        if k is None:
            skipped.append((p, f"no epoch number in the file name (rule: {EPOCH_RULE}); "
                               "use --order name or --order mtime to number files by name or time"))
        else:
            found.append((k, p, "number in name"))
    return sorted(found, key=lambda c: (c[0], c[1].name)), skipped


def group_reasons(skipped: Iterable[tuple[Path, str]]) -> list[tuple[str, list[Path]]]:
    """(reason, files) with each reason once, in first-seen order: a shared error is said once."""
    groups: dict[str, list[Path]] = {}
    for p, r in skipped:
        groups.setdefault(r, []).append(p)
    return list(groups.items())
