"""``python -m core import``: the command line of ``core.training.importer``."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from core.run.import_files import EPOCH_RULE, ORDERS, group_reasons
from core.run.remote import as_root, fetch_folder, is_url, local_runs_root, runs_root_arg
from core.run.runs import RunError


def add_import(sub) -> None:
    """Register ``python -m core import SRC --name NAME ...``."""
    from core.run.images import FITS
    from core.run.preprocess import CLI_HELP

    p = sub.add_parser(
        "import", help="turn a folder of per-epoch Keras checkpoints into a run (files are referenced, not copied)",
        description=f"Import per-epoch checkpoints (.keras, .h5/.hdf5, .weights.h5). Epoch number: {EPOCH_RULE}. "
                    "A Keras CSVLogger file (training.log or a .csv with an epoch column) becomes the history. "
                    "The file -> mini-epoch table is printed before anything is written.")
    p.add_argument("src", metavar="SRC", type=as_root,
                   help="folder holding the checkpoint files, or its URL (s3://, gs://: copied to a local cache)")
    p.add_argument("--name", required=True, help="name of the new run (folder under --runs-root)")
    p.add_argument("--runs-root", type=local_runs_root, default=str(runs_root_arg()),
                   help="folder of runs (default: $ADE_RUNS_ROOT or data/runs)")
    p.add_argument("--architecture", type=Path, metavar="PATH",
                   help="the model: .keras or .h5 full model, or model.json from model.to_json() "
                        "(default: the first full-model checkpoint)")
    p.add_argument("--order", choices=ORDERS, default="number",
                   help="how files become mini-epochs: number (the epoch in the name, default), name "
                        "(sorted by file name: 1, 2, ...) or mtime (by modification time)")
    from core.run.custom_objects import add_model_args

    add_model_args(p)
    p.add_argument("--preprocessing", metavar="SCALING", default=None,
                   help=f"how the model expects pixels scaled: {CLI_HELP}. Default: detected in the model "
                        "(Rescaling/Normalization layers), else 'none' recorded as a guess")
    p.add_argument("--probes", type=Path, nargs="+", metavar="FILE_OR_DIR",
                   help="probe images for the run (files or folders; a folder's sub-folders are classes, "
                        "in sorted order, as image_dataset_from_directory)")
    p.add_argument("--fit", choices=FITS, default="resize",
                   help="how probe images are fitted to the input (default resize: bilinear, as tf.image.resize)")
    p.set_defaults(func=cmd_import)


def print_plan(ordered: list[tuple[int, Path, str]]) -> None:
    """The file -> mini-epoch table, printed before anything is read or written."""
    print("file -> mini-epoch:", file=sys.stderr)
    width = max(len(p.name) for _, p, _ in ordered)
    for k, p, how in ordered:
        print(f"  {p.name:<{width}}  -> {k}  ({how})", file=sys.stderr)


def cmd_import(args) -> int:
    from tqdm import tqdm

    from core.errors import UserError
    from core.run.custom_objects import CustomObjectsError, load_custom_objects
    from core.training.importer import CheckpointImportError, import_checkpoints
    from core.run.loading import ModelLoadError
    from core.run.preprocess import PreprocessSpec

    if args.preprocessing is not None:
        try:
            PreprocessSpec.parse(args.preprocessing)
        except ValueError as e:
            raise UserError(f"--preprocessing: {e}") from None
    bar: list[Any] = []

    def progress(done: int, total: int, filename: str) -> None:
        if not bar:
            bar.append(tqdm(total=total, desc="verifying", unit="file", dynamic_ncols=True, file=sys.stderr))
        bar[0].set_postfix_str(filename, refresh=False)
        bar[0].update(done - bar[0].n)

    try:
        src = fetch_folder(args.src) if is_url(args.src) else args.src  # core.run.remote
        custom = load_custom_objects(args.custom_objects, args.trust_code) if args.custom_objects else None
        result = import_checkpoints(src, args.runs_root, args.name, architecture=args.architecture,
                                    trust=args.trust_code, input_preprocessing=args.preprocessing,
                                    progress=progress, order=args.order, probes=args.probes or (),
                                    fit=args.fit, custom_objects=custom, plan=print_plan)
    except (CheckpointImportError, ModelLoadError, RunError, CustomObjectsError) as e:
        raise UserError(str(e)) from None
    finally:
        if bar:
            bar[0].close()
    print(format_result(result))
    return 0


def format_result(result) -> str:
    """Human-readable summary of an import; a reason shared by several skipped files is printed once."""
    from core.run.preprocess import PreprocessSpec

    epochs = [k for k, _ in result.imported]
    lines = [f"imported {len(epochs)} checkpoint(s) as run {result.run} "
             f"(mini-epochs {epochs[0]} to {epochs[-1]}; architecture from {result.architecture_source.name}"
             + (", Lambda code trusted" if result.trusted_code else "") + ")"]
    lines += [f"  mini-epoch {k}: {p.name}" for k, p in result.imported]
    if result.history_source is not None:
        lines.append(f"history from {result.history_source.name}")
    if result.preprocessing is not None:
        lines.append(f"pixel scaling: {PreprocessSpec.from_dict(result.preprocessing).describe()}")
    if result.probes:
        lines.append(f"probe set: {result.probes} image(s)")
    if result.dropped:
        lines.append("left out of the model (training-only objects whose code is not here; the forward pass "
                     f"does not use them): {', '.join(result.dropped)}")
    for reason, paths in group_reasons(result.skipped):
        names = ", ".join(p.name for p in paths)
        lines.append(f"skipped {names}: {reason}" if len(paths) == 1
                     else f"skipped {len(paths)} files ({names}): {reason}")
    return "\n".join(lines)
