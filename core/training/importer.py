"""Import a folder of foreign per-epoch Keras checkpoints as a run that references (never copies) them."""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from core.run.import_files import (  # noqa: F401  (re-exported: the file-name half of the importer)
    CHECKPOINT_SUFFIXES, EPOCH_RULE, JSON_SUFFIX, ORDERS, checkpoint_files, checkpoint_stem, csvlogger_history,
    dedupe_epochs, epoch_number, find_history_log, group_reasons, is_checkpoint_name, order_checkpoints,
    scan_folder,
)
from core.run.runs import MANIFEST, RunWriter, make_manifest, resolve_run_path

if TYPE_CHECKING:  # Keras is imported lazily so `python -m core --help` stays fast
    import keras

Progress = Callable[[int, int, str], None]

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
    dropped: tuple[str, ...] = ()  # training-only objects left out of the model (``layer.key = Name``)
    preprocessing: Mapping[str, Any] | None = None
    probes: int = 0

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


def _model_from_json(path: Path, trust: bool, legacy_weights: Sequence[Path] = (),
                     custom_objects: Any = None) -> "keras.Model":
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
    from core.run.custom_objects import strip_training_only

    objects = dict(custom_objects.objects) if custom_objects is not None else {}
    config, _dropped = strip_training_only(config, objects)
    try:
        with keras.saving.custom_object_scope(objects):
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


def load_architecture(path: Path, trust: bool, legacy_weights: Sequence[Path] = (), custom_objects: Any = None,
                      notes: list[str] | None = None) -> tuple["keras.Model", bool]:
    """(model, whether trusting Python code was needed) from a .keras/.h5 model or a model.json.

    ``legacy_weights`` (legacy .h5 checkpoints) are only used to rebuild a Keras 2 model.json.
    Training-only objects left out of the model are appended to ``notes``.
    """
    from core.run.loading import UnsafeModelError, load_model_noted

    def load(trusted: bool) -> "keras.Model":
        if path.name.lower().endswith(JSON_SUFFIX):
            return _model_from_json(path, trusted, legacy_weights, custom_objects)
        loaded = load_model_noted(path, trust=trusted, custom_objects=custom_objects)
        if notes is not None:
            notes.extend(d for d in loaded.dropped if d not in notes)
        return loaded.model

    try:
        return load(False), False
    except UnsafeModelError:
        if not trust:
            raise
        return load(True), True


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


def _first_full_model(candidates: list[tuple[int, Path]], trust: bool, custom_objects: Any = None,
                      notes: list[str] | None = None) -> tuple["keras.Model", bool, Path]:
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
            model, trusted = load_architecture(p, trust, custom_objects=custom_objects, notes=notes)
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

# ---- the import ---------------------------------------------------------------------------------


def _preprocessing(spec: Mapping[str, Any] | str | None, model: "keras.Model") -> dict[str, Any]:
    """The manifest's preprocessing: as given, else detected in the model, else a guess that says so."""
    from core.engine.scaling import detect_scaling
    from core.run.preprocess import PreprocessSpec

    try:
        if isinstance(spec, str):
            return PreprocessSpec.parse(spec).to_dict()
        if spec is not None:
            return PreprocessSpec.from_dict(spec).to_dict()
    except ValueError as e:
        raise CheckpointImportError(f"input_preprocessing: {e}") from None
    detected = detect_scaling(model)
    if detected is not None:
        return detected.to_dict()
    return PreprocessSpec("none", source="guess").to_dict()


def _dataset_note(preprocessing: Mapping[str, Any]) -> dict[str, Any]:
    note = "imported checkpoints: the training data is unknown"
    if preprocessing.get("source") == "guess":
        note += ("; the pixel scaling is unknown too, 'none' (raw 0-255 floats) is only a guess. Set it "
                 "with import --preprocessing, or change it in the app's sidebar")
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


def _probe_files(probes: Sequence[Path], model: "keras.Model", shape: tuple[int, int, int], fit: str,
                 names: list[str]) -> tuple[Any, list[str]]:
    """The probe images fitted to the model, and the class names (from sub-folders when none were given)."""
    from core.run.probefiles import ProbeFilesError, collect_probe_files, load_probe_files

    try:
        _files, folders = collect_probe_files(probes)
        if folders and not names:
            outputs = list(model.outputs or [])
            n = int(outputs[0].shape[-1]) if len(outputs) == 1 and outputs[0].shape[-1] is not None else None
            if n is not None and n != len(folders):
                raise ProbeFilesError(
                    f"the probe folder has {len(folders)} class sub-folders but the model has {n} outputs: give "
                    "one sub-folder per class (in the training's class order) or put the images directly in "
                    "the folder (unlabelled)")
            names = list(folders)
        return load_probe_files(probes, shape, fit, names), names
    except ProbeFilesError as e:
        raise CheckpointImportError(f"--probes: {e}") from None


def import_checkpoints(src: Path, runs_root: Path, name: str, *, architecture: Path | None = None,
                       trust: bool = False, input_preprocessing: Mapping[str, Any] | str | None = None,
                       class_names: Iterable[str] | None = None, progress: Progress | None = None,
                       order: str = "number", probes: Sequence[Path] = (), fit: str = "resize",
                       custom_objects: Any = None,
                       plan: Callable[[list[tuple[int, Path, str]]], None] | None = None) -> ImportResult:
    """Create run ``name`` under ``runs_root`` that references the per-epoch checkpoints in ``src``.

    ``order`` numbers the files (``order_checkpoints``: the epoch in each name, or by name or
    modification time); ``plan`` sees the file -> mini-epoch table before anything is read or
    written. Of several readable files for one epoch the newest (mtime) is kept. The
    architecture comes from ``architecture`` or else from the lowest-epoch full-model checkpoint,
    loaded in safe mode unless ``trust`` (Lambda layers without trust raise UnsafeModelError);
    ``custom_objects`` (``core.run.custom_objects.CustomObjects``) supply the user's layers. The
    pixel scaling is ``input_preprocessing``, else detected in the model, else a guess recorded
    as such. ``probes`` (image files or folders, labels from sub-folders) become the run's probe
    set, fitted by ``fit``. Files that are unnamed, duplicated, unreadable or of another
    architecture are skipped and reported, not fatal. Raises CheckpointImportError, RunError or
    ModelLoadError, having written nothing, when nothing sensible can be written.
    """
    src = Path(src)
    run_dir = resolve_run_path(runs_root, name)
    if (run_dir / MANIFEST).exists():
        raise CheckpointImportError(f"{run_dir}: a run named {name!r} already exists; pick another name")
    if not src.is_dir():
        raise CheckpointImportError(f"{src}: not a folder; give the folder that holds the checkpoint files")
    if order not in ORDERS:
        raise CheckpointImportError(f"--order must be one of {', '.join(ORDERS)}, not {order!r}")
    names = [str(c) for c in class_names or ()]

    files, skipped = checkpoint_files(src)
    if architecture is not None:
        architecture = Path(architecture)
        # an architecture file kept beside the checkpoints is neither a checkpoint nor skipped
        files = [p for p in files if p.resolve() != architecture.resolve()]
        skipped = [(p, r) for p, r in skipped if p.resolve() != architecture.resolve()]
    ordered, unnumbered = order_checkpoints(files, order)
    skipped += unnumbered
    if not ordered:
        raise CheckpointImportError(f"{src}: no checkpoint files with an epoch number in their name"
                                    + _skipped_text(skipped))
    if plan is not None:
        plan(ordered)
    candidates = [(k, p) for k, p, _ in ordered]

    notes: list[str] = []
    if architecture is not None:
        legacy = _legacy_h5_files(candidates) if architecture.name.lower().endswith(JSON_SUFFIX) else []
        model, trusted = load_architecture(architecture, trust, legacy, custom_objects, notes)
        arch_source = architecture
    else:
        model, trusted, arch_source = _first_full_model(candidates, trust, custom_objects, notes)
    input_shape = image_input_shape(model)
    if names:
        _check_class_names(model, names)
    preprocessing = _preprocessing(input_preprocessing, model)
    probe_set, names = _probe_files(probes, model, input_shape, fit, names) if probes else (None, names)

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

    from core.run.custom_objects import object_modules

    manifest = make_manifest(
        name, input_shape, preprocessing=preprocessing, class_names=names, mini_epoch_images=0,
        training={"imported_from": str(src.resolve()), "architecture_source": str(Path(arch_source).resolve()),
                  "trusted_code": trusted, "epoch_rule": EPOCH_RULE, "order": order,
                  "history_source": str(log.resolve()) if log else None,
                  "left_out_of_model": list(notes), "custom_objects": object_modules(model)},
        dataset=_dataset_note(preprocessing), external_checkpoints=entries)
    manifest["input"]["fit"] = fit
    _write_run(run_dir, manifest, model, history, probe_set)
    return ImportResult(
        run=run_dir,
        imported=tuple((e["mini_epoch"], Path(e["path"])) for e in entries),
        skipped=tuple(sorted(skipped, key=lambda s: s[0].name)),
        architecture_source=Path(arch_source), trusted_code=trusted,
        history_source=log, dropped=tuple(notes), preprocessing=preprocessing,
        probes=len(probe_set.x) if probe_set is not None else 0)


def _write_run(run_dir: Path, manifest: dict[str, Any], model: "keras.Model", history: pd.DataFrame | None,
               probe_set: Any = None) -> None:
    """Write the run; the manifest goes last because it is what makes a run visible."""
    created = not run_dir.exists()
    writer = RunWriter(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if history is not None:
            writer.write_history(history)
        writer.create(manifest, model=model, probes=(probe_set.x, probe_set.y) if probe_set is not None else None)
    except BaseException:
        if created:  # leave no half-written run that would block the name
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _skipped_text(skipped: list[tuple[Path, str]]) -> str:
    if not skipped:
        return ""
    groups = group_reasons(skipped)
    return "; skipped: " + "; ".join(f"{', '.join(p.name for p in ps[:8])}"
                                     + (f" (+{len(ps) - 8} more)" if len(ps) > 8 else "") + f": {r}"
                                     for r, ps in groups[:10]) + (
        f" (+{len(groups) - 10} more reasons)" if len(groups) > 10 else "")


from core.training.import_cli import add_import, cmd_import, format_result  # noqa: E402,F401  (re-exported)
