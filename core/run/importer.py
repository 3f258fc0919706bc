"""Import a folder of foreign per-epoch Keras checkpoints as a run that references (never copies) them."""
from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from core.run.runs import (HISTORY_COLUMNS, MANIFEST, RunError, RunWriter, make_manifest, resolve_run_path,
                       runs_root_from_env)

if TYPE_CHECKING:  # Keras is imported lazily so `python -m core --help` stays fast
    import keras

Progress = Callable[[int, int, str], None]

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
# a file that fails to load as the architecture for a reason other than damage usually means they all will
ARCHITECTURE_ATTEMPTS = 3


class CheckpointImportError(ValueError):
    """The folder cannot be imported as it is; the message says why and what to do."""


@dataclass(frozen=True)
class ImportResult:
    """What ``import_checkpoints`` did: the run it wrote, the checkpoints it referenced, the files it left out."""

    run: Path
    imported: tuple[tuple[int, Path], ...]
    skipped: tuple[tuple[Path, str], ...]
    architecture_source: Path
    trusted_code: bool = False
    history_source: Path | None = None


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
    stem = checkpoint_stem(filename)
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


def _reason(path: Path, e: Exception) -> str:
    """The error message without the leading ``<path>: `` (the result pairs it with the file anyway)."""
    text = str(e)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


# ---- architecture ---------------------------------------------------------------------------------


def _read_model_json(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointImportError(f"{path}: not a readable JSON model config ({e})") from None
    if not isinstance(config, dict) or "class_name" not in config or "config" not in config:
        raise CheckpointImportError(f"{path}: not a Keras model config (expected the output of model.to_json())")
    return config


def is_keras2_config(config: Mapping[str, Any]) -> bool:
    """Keras 3 configs name each object's ``module``; Keras 2 (tf.keras) and legacy-h5 configs do not."""
    return "module" not in config


def _model_from_json(path: Path, trust: bool, legacy_weights: Sequence[Path] = ()) -> "keras.Model":
    """A model from ``model.to_json()`` output (or a .keras archive's config.json).

    Keras 2 configs need ``legacy_weights`` (legacy .h5 checkpoints), see ``_keras2_model``.
    """
    import keras

    from core.run.loading import TRUST_HINT, UnsafeModelError, unsafe_parts

    config = _read_model_json(path)
    parts = unsafe_parts(config)
    if parts and not trust:
        raise UnsafeModelError(f"{path}: the file contains Lambda layers whose Python code would run on load: "
                               f"{', '.join(parts)}. {TRUST_HINT}")
    if is_keras2_config(config):
        return _keras2_model(path, legacy_weights, trust)
    try:
        model = keras.saving.deserialize_keras_object(config, safe_mode=not trust)
    except Exception as e:  # noqa: BLE001 - any deserialisation failure is one explained error
        raise CheckpointImportError(f"{path}: could not rebuild the model ({type(e).__name__}: {e})") from e
    if not isinstance(model, keras.Model):
        raise CheckpointImportError(f"{path}: describes a {type(model).__name__}, not a Keras model")
    return model


def _keras2_model(path: Path, legacy_weights: Sequence[Path], trust: bool) -> "keras.Model":
    """Rebuild a Keras 2 JSON config through Keras 3's legacy .h5 loader, its only public route.

    The config is wrapped with a legacy checkpoint's weights into a temporary full-model .h5;
    checkpoints that do not fit (another architecture, damaged) are passed over.
    """
    from core.run.loading import ModelLoadError, UnsafeModelError, load_model_file

    if not legacy_weights:
        raise CheckpointImportError(
            f"{path}: a Keras 2 (tf.keras) model config; Keras 3 rebuilds it only together with legacy "
            ".h5/.hdf5 weights, and there are none among the checkpoints. Pass a full-model .h5 "
            "checkpoint from the same training as the architecture instead")
    errors = []
    with tempfile.TemporaryDirectory(prefix="ade-import-") as tmp:
        for i, weights in enumerate(legacy_weights[:ARCHITECTURE_ATTEMPTS]):
            try:
                return load_model_file(_legacy_full_model(path, weights, Path(tmp) / f"model{i}.h5"), trust=trust)
            except UnsafeModelError:
                raise
            except (ModelLoadError, OSError, KeyError, ValueError) as e:
                errors.append(f"{weights.name}: {type(e).__name__}: {e}")
    raise CheckpointImportError(f"{path}: a Keras 2 model config that none of the legacy checkpoints fits "
                                f"({'; '.join(errors[:3])})")


def _legacy_full_model(config_path: Path, weights: Path, out: Path) -> Path:
    """Write ``out``: a legacy full-model .h5 made of a Keras 2 JSON config and a legacy weights file."""
    import h5py

    with h5py.File(weights, "r") as src, h5py.File(out, "w") as dst:
        group = src["model_weights"] if "model_weights" in src and "layer_names" not in src.attrs else src
        dst.attrs["model_config"] = config_path.read_text(encoding="utf-8")
        for key in ("backend", "keras_version"):
            if key in src.attrs:
                dst.attrs[key] = src.attrs[key]
        target = dst.create_group("model_weights")
        for key, value in group.attrs.items():
            target.attrs[key] = value
        for key in group:
            group.copy(group[key], target, name=key)
    return out


def load_architecture(path: Path, trust: bool, legacy_weights: Sequence[Path] = ()) -> tuple["keras.Model", bool]:
    """(model, whether trusting Python code was needed) from a .keras/.h5 model or a model.json.

    ``legacy_weights`` (legacy .h5 checkpoints) are only used to rebuild a Keras 2 model.json.
    """
    from core.run.loading import UnsafeModelError, load_model_file

    if path.name.lower().endswith(JSON_SUFFIX):
        try:
            return _model_from_json(path, False, legacy_weights), False
        except UnsafeModelError:
            if not trust:
                raise
            return _model_from_json(path, True, legacy_weights), True
    try:
        return load_model_file(path, trust=False), False
    except UnsafeModelError:
        if not trust:
            raise
        return load_model_file(path, trust=True), True


def _legacy_h5_files(candidates: list[tuple[int, Path]]) -> list[Path]:
    """Legacy .h5 checkpoints by epoch: the weights a Keras 2 model.json needs to be rebuilt."""
    from core.run.loading import ModelLoadError, file_kind

    out = []
    for _, p in candidates:
        try:
            if file_kind(p) in ("h5-weights", "h5-model"):
                out.append(p)
        except ModelLoadError:
            continue
    return out


def _first_full_model(candidates: list[tuple[int, Path]], trust: bool) -> tuple["keras.Model", bool, Path]:
    """The architecture of the lowest-epoch full-model checkpoint that loads.

    Damaged files are passed over (verification reports them later), and so are up to
    ARCHITECTURE_ATTEMPTS files that fail to load; a Lambda refusal is not, because the user
    must decide about trusting the code.
    """
    from core.run.loading import ModelLoadError, UnsafeModelError, file_kind

    failures: list[str] = []
    for _, p in candidates:
        try:
            if file_kind(p) not in ("keras-model", "h5-model"):
                continue
            model, trusted = load_architecture(p, trust)
        except UnsafeModelError:
            raise
        except ModelLoadError as e:
            failures.append(f"{p.name}: {_reason(p, e)}")
            if len(failures) >= ARCHITECTURE_ATTEMPTS:
                break
            continue
        return model, trusted, p
    hint = ("Pass the architecture: a .keras or .h5 model, or the model.json written by model.to_json() "
            "(it may be rebuilt in code, e.g. without Lambda layers)")
    if failures:
        raise CheckpointImportError(f"no checkpoint could serve as the architecture ({'; '.join(failures)}). {hint}")
    raise CheckpointImportError(f"no architecture: the checkpoints hold weights only. {hint}")


def image_input_shape(model: "keras.Model") -> tuple[int, int, int]:
    """(H, W, C) of the model's single image input; anything else cannot be explored."""
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):  # a Sequential model that was never built has no inputs
        inputs = []
    if len(inputs) != 1:
        raise CheckpointImportError(f"model {model.name!r} has {len(inputs)} inputs; only single-input image "
                                    "models (H, W, C) can be explored")
    shape = tuple(inputs[0].shape)[1:]
    if len(shape) != 3 or any(d is None for d in shape) or not 1 <= int(shape[2]) <= 4:
        raise CheckpointImportError(
            f"model {model.name!r} takes input of shape {shape}; an image input (H, W, C) with fixed height "
            "and width and 1-4 channels is required (channels-last)")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _check_class_names(model: "keras.Model", class_names: list[str]) -> None:
    outputs = list(model.outputs or [])
    if len(outputs) == 1 and len(outputs[0].shape) == 2 and outputs[0].shape[-1] is not None:
        n = int(outputs[0].shape[-1])
        if n != len(class_names):
            raise CheckpointImportError(f"{len(class_names)} class names given but the model has {n} outputs")


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


# ---- the import ---------------------------------------------------------------------------------


def _preprocessing(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    from core.run.preprocess import PreprocessSpec

    if spec is None:
        return {"kind": "none"}
    try:
        PreprocessSpec.from_dict(spec)
    except ValueError as e:
        raise CheckpointImportError(f"input_preprocessing: {e}") from None
    return dict(spec)


def _dataset_note(preprocessing_known: bool) -> dict[str, Any]:
    note = "imported checkpoints: the training data is unknown"
    if not preprocessing_known:
        note += ("; the input preprocessing is unknown too, 'none' (raw 0-255 floats) is only a placeholder. "
                 "Set input.preprocessing in manifest.json if the model expects scaled input")
    return {"kind": "unknown", "note": note}


def verify_checkpoints(candidates: list[tuple[int, Path]], model: "keras.Model", progress: Progress | None = None,
                       ) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Read every checkpoint once against ``model``: manifest entries for the good ones, reasons for the rest.

    Reading catches truncated files and other architectures (read_weights_file checks names and shapes).
    """
    from core.run.loading import ModelLoadError, file_kind, read_weights_file

    entries: list[dict[str, Any]] = []
    skipped: list[tuple[Path, str]] = []
    for i, (k, p) in enumerate(candidates, start=1):
        try:
            kind = file_kind(p)
            read_weights_file(p, model)
        except ModelLoadError as e:
            skipped.append((p, _reason(p, e)))
        else:
            entries.append({"mini_epoch": k, "path": str(p.resolve()), "kind": kind})
        if progress is not None:
            progress(i, len(candidates), p.name)
    return entries, skipped


def import_checkpoints(src: Path, runs_root: Path, name: str, *, architecture: Path | None = None,
                       trust: bool = False, input_preprocessing: Mapping[str, Any] | None = None,
                       class_names: Iterable[str] | None = None, progress: Progress | None = None) -> ImportResult:
    """Create run ``name`` under ``runs_root`` that references the per-epoch checkpoints in ``src``.

    The epoch in each file name (see ``EPOCH_RULE``) becomes the mini-epoch; of several readable
    files for one epoch the newest (mtime) is kept. The architecture comes from ``architecture``
    or else from the lowest-epoch full-model checkpoint, loaded in safe mode unless ``trust``
    (Lambda layers without trust raise UnsafeModelError). Files that are unnamed, duplicated,
    unreadable or of another architecture are skipped and reported, not fatal.
    Raises CheckpointImportError, RunError or ModelLoadError when nothing sensible can be written.
    """
    src = Path(src)
    run_dir = resolve_run_path(runs_root, name)
    if (run_dir / MANIFEST).exists():
        raise CheckpointImportError(f"{run_dir}: a run named {name!r} already exists; pick another name")
    if not src.is_dir():
        raise CheckpointImportError(f"{src}: not a folder; give the folder that holds the checkpoint files")
    preprocessing = _preprocessing(input_preprocessing)
    names = [str(c) for c in class_names or ()]

    found, skipped = scan_folder(src)
    candidates = sorted(found, key=lambda c: c[0])  # stable: same-epoch files stay in name order
    if architecture is not None:
        architecture = Path(architecture)
        # an architecture file kept beside the checkpoints is not a skipped checkpoint
        skipped = [(p, r) for p, r in skipped if p.resolve() != architecture.resolve()]
    if not candidates:
        raise CheckpointImportError(f"{src}: no checkpoint files with an epoch number in their name"
                                    + _skipped_text(skipped))

    if architecture is not None:
        legacy = _legacy_h5_files(candidates) if architecture.name.lower().endswith(JSON_SUFFIX) else []
        model, trusted = load_architecture(architecture, trust, legacy)
        arch_source = architecture
    else:
        model, trusted, arch_source = _first_full_model(candidates, trust)
    input_shape = image_input_shape(model)
    if names:
        _check_class_names(model, names)

    # verify before deduplicating, so a damaged newest file does not hide an older good one
    entries, bad = verify_checkpoints(candidates, model, progress)
    kept, duplicates = dedupe_epochs((e["mini_epoch"], Path(e["path"])) for e in entries)
    entries = [e for e in entries if (e["mini_epoch"], Path(e["path"])) in set(kept)]
    skipped += bad + duplicates
    if not entries:
        raise CheckpointImportError(f"{src}: no checkpoint matches the architecture from {arch_source}"
                                    + _skipped_text(skipped))

    log = find_history_log(src)
    history = csvlogger_history(log.read_text(encoding="utf-8", errors="replace")) if log else None
    if history is not None and not len(history):
        log, history = None, None

    manifest = make_manifest(
        name, input_shape, preprocessing=preprocessing, class_names=names, mini_epoch_images=0,
        training={"imported_from": str(src.resolve()), "architecture_source": str(Path(arch_source).resolve()),
                  "trusted_code": trusted, "epoch_rule": EPOCH_RULE,
                  "history_source": str(log.resolve()) if log else None},
        dataset=_dataset_note(input_preprocessing is not None),
        external_checkpoints=entries)
    _write_run(run_dir, manifest, model, history)
    return ImportResult(
        run=run_dir,
        imported=tuple((e["mini_epoch"], Path(e["path"])) for e in entries),
        skipped=tuple(sorted(skipped, key=lambda s: s[0].name)),
        architecture_source=Path(arch_source), trusted_code=trusted,
        history_source=log)


def _write_run(run_dir: Path, manifest: dict[str, Any], model: "keras.Model", history: pd.DataFrame | None) -> None:
    """Write the run; the manifest goes last because it is what makes a run visible."""
    created = not run_dir.exists()
    writer = RunWriter(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if history is not None:
            writer.write_history(history)
        writer.create(manifest, model=model)
    except BaseException:
        if created:  # leave no half-written run that would block the name
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _skipped_text(skipped: list[tuple[Path, str]]) -> str:
    if not skipped:
        return ""
    return "; skipped: " + "; ".join(f"{p.name}: {r}" for p, r in skipped[:10]) + (
        f" (+{len(skipped) - 10} more)" if len(skipped) > 10 else "")


# ---- command line -----------------------------------------------------------------------------------


def add_import(sub) -> None:
    """Register ``python -m core import SRC --name NAME ...``."""
    p = sub.add_parser(
        "import", help="turn a folder of per-epoch Keras checkpoints into a run (files are referenced, not copied)",
        description=f"Import per-epoch checkpoints (.keras, .h5/.hdf5, .weights.h5). Epoch number: {EPOCH_RULE}. "
                    "A Keras CSVLogger file (training.log or a .csv with an epoch column) becomes the history.")
    p.add_argument("src", metavar="SRC", type=Path, help="folder holding the checkpoint files")
    p.add_argument("--name", required=True, help="name of the new run (folder under --runs-root)")
    p.add_argument("--runs-root", type=Path, default=runs_root_from_env(),
                   help="folder of runs (default: $ADE_RUNS_ROOT or data/runs)")
    p.add_argument("--architecture", type=Path, metavar="PATH",
                   help="the model: .keras or .h5 full model, or model.json from model.to_json() "
                        "(default: the first full-model checkpoint)")
    p.add_argument("--trust-code", action="store_true",
                   help="allow Lambda layers. Their Python code runs when the model is loaded, so a malicious "
                        "file can do anything your user account can; only use this for files you made or "
                        "fully trust")
    p.add_argument("--preprocessing", choices=["none", "scale01", "scale_pm1"], default=None,
                   help="how the model expects pixels scaled (none: raw 0-255, scale01: x/255, "
                        "scale_pm1: x/127.5-1); default: unknown, stored as none")
    p.set_defaults(func=cmd_import)


def cmd_import(args) -> int:
    from tqdm import tqdm

    from core.cli import UserError  # imported here: core.cli registers this module's add_import
    from core.run.loading import ModelLoadError

    bar: list[Any] = []

    def progress(done: int, total: int, filename: str) -> None:
        if not bar:
            bar.append(tqdm(total=total, desc="verifying", unit="file", dynamic_ncols=True, file=sys.stderr))
        bar[0].set_postfix_str(filename, refresh=False)
        bar[0].update(done - bar[0].n)

    pre = {"kind": args.preprocessing} if args.preprocessing else None
    try:
        result = import_checkpoints(args.src, args.runs_root, args.name, architecture=args.architecture,
                                    trust=args.trust_code, input_preprocessing=pre, progress=progress)
    except (CheckpointImportError, ModelLoadError, RunError) as e:
        raise UserError(str(e)) from None
    finally:
        if bar:
            bar[0].close()
    print(format_result(result))
    return 0


def format_result(result: ImportResult) -> str:
    """Human-readable summary of an import, one line per skipped file."""
    epochs = [k for k, _ in result.imported]
    lines = [f"imported {len(epochs)} checkpoint(s) as run {result.run} "
             f"(mini-epochs {epochs[0]} to {epochs[-1]}; architecture from {result.architecture_source.name}"
             + (", Lambda code trusted" if result.trusted_code else "") + ")"]
    lines += [f"  mini-epoch {k}: {p.name}" for k, p in result.imported]
    if result.history_source is not None:
        lines.append(f"history from {result.history_source.name}")
    lines += [f"skipped {p.name}: {r}" for p, r in result.skipped]
    return "\n".join(lines)
