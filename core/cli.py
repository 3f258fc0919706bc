"""Sub-commands of ``python -m core``; each ``add_*`` registers one argparse sub-parser."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

from core.errors import UserError
from core.training.importer import add_import
from core.run.repair import add_repair
from core.run.remote import local_runs_root, runs_root_arg
from core.run.runs import RunError, resolve_run_path

__all__ = ["COMMANDS", "UserError", "run_sweep_cli"]


def _run_path(value: str, root: Path) -> Path:
    """A run given as a path or as a name under the runs root."""
    p = Path(value)
    if p.exists() or "/" in value or value.startswith("."):
        return p
    return root / value


def _bar(total: int, desc: str, unit: str = "img"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, file=sys.stderr)


# -- train ----------------------------------------------------------------------
#: train flag -> (ArchConfig or TrainConfig field); a flag not given keeps the dataclass default.
_TRAIN_FLAGS = {"dataset": "dataset", "train_images": "train_images", "val_images": "val_images",
                "probe_images": "probe_images", "optimizer": "optimizer", "lr": "learning_rate",
                "momentum": "momentum", "lr_schedule": "lr_schedule", "batch_size": "batch_size",
                "mini_epoch_images": "mini_epoch_images", "mini_epochs": "mini_epochs", "augment": "augment",
                "seed": "seed"}
_ARCH_FLAGS = {"input_size": "input_size", "num_classes": "num_classes", "widths": "widths", "convs": "convs",
               "activation": "activation", "batchnorm": "batchnorm", "se": "se", "se_ratio": "se_ratio",
               "se_gate_bias": "se_gate_bias", "near_one": "near_one_weight", "l2": "l2"}


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.split(","))


def add_train(sub) -> None:
    # Defaults live in ArchConfig / TrainConfig; they are not read here so that registering the
    # command (and refusing a bad name) does not import TensorFlow.
    p = sub.add_parser("train", help="train the built-in network, one checkpoint per mini-epoch",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("name", help="run name: a folder under --runs-root (letters, digits, . _ -)")
    p.add_argument("--runs-root", type=local_runs_root, default=str(runs_root_arg()))
    p.add_argument("--resume", action="store_true", default=False, help="continue after the last complete checkpoint")
    p.add_argument("--dataset", help="'synthetic' (default) or an image folder (one sub-folder per class)")
    for flag, typ in (("--train-images", int), ("--val-images", int), ("--probe-images", int), ("--lr", float),
                      ("--momentum", float), ("--batch-size", int), ("--mini-epoch-images", int), ("--seed", int),
                      ("--input-size", int), ("--num-classes", int), ("--se-ratio", int), ("--se-gate-bias", float),
                      ("--l2", float)):
        p.add_argument(flag, type=typ)
    p.add_argument("--optimizer", choices=["adam", "sgd"])
    p.add_argument("--lr-schedule", choices=["constant", "cosine"])
    p.add_argument("--mini-epochs", type=int, help="total mini-epochs (with --resume: default the run's planned total)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction)
    p.add_argument("--widths", type=_ints, help="channels per conv block, e.g. 24,32,48,64,96")
    p.add_argument("--convs", type=_ints, help="conv layers per block, e.g. 2,2,2,2,1")
    p.add_argument("--activation", choices=["relu", "elu", "sigmoid"])
    p.add_argument("--batchnorm", action=argparse.BooleanOptionalAction)
    p.add_argument("--se", action=argparse.BooleanOptionalAction)
    p.add_argument("--near-one", type=float, help="weight of the near-1 SE gate regulariser weight*mean((1-gate)**2)")
    p.add_argument("--tensorboard", type=Path, metavar="DIR",
                   help="also write loss, accuracy, learning rate and weight norms per mini-epoch as TensorBoard "
                        "logs into DIR while training (activation and gate statistics: `export --format "
                        "tensorboard` afterwards)")
    p.set_defaults(func=cmd_train)


def train_config_from_args(args) -> "Any":
    from core.training.models import ArchConfig
    from core.training.trainer import TrainConfig

    given = vars(args)
    arch = dataclasses.replace(ArchConfig(), **{f: given[k] for k, f in _ARCH_FLAGS.items() if k in given})
    return TrainConfig(arch=arch, **{f: given[k] for k, f in _TRAIN_FLAGS.items() if given.get(k) is not None})


def cmd_train(args) -> int:
    try:  # the same names as ``import``: one folder under the runs root, never a path
        run_dir = resolve_run_path(args.runs_root, args.name)
    except RunError as e:
        raise UserError(str(e)) from None
    from core.training.trainer import train

    try:
        cfg = train_config_from_args(args)
    except ValueError as e:
        raise UserError(str(e)) from None
    if args.resume and getattr(args, "mini_epochs", None) is None:  # continue to the total the run was planned with
        from core.run.runs import Run

        try:
            planned = Run(run_dir).manifest.training.get("mini_epochs")
        except RunError as e:
            raise UserError(str(e)) from None
        if planned:
            cfg = dataclasses.replace(cfg, mini_epochs=int(planned))
    print(f"training into {run_dir}", file=sys.stderr)
    bar = _bar(cfg.mini_epochs * cfg.steps_per_mini_epoch * cfg.batch_size, run_dir.name)

    def progress(s: dict[str, Any]) -> None:
        bar.n = s["images_done"]
        bar.set_postfix(mini_epoch=f"{s['mini_epoch']}/{s['mini_epochs']}", refresh=False)
        bar.refresh()

    try:
        run = train(cfg, run_dir, resume=args.resume, progress=progress, handle_signals=True,
                    tensorboard_dir=getattr(args, "tensorboard", None))
    except (RunError, ValueError) as e:
        raise UserError(str(e)) from None
    finally:
        bar.close()
    hist = run.history()
    if len(hist):
        last = hist.iloc[-1]
        print(f"done: {len(run.checkpoints())} checkpoints, last mini-epoch {int(last['mini_epoch'])}: "
              f"loss {last['loss']:.3f}, acc {last['accuracy']:.3f}, val acc {last['val_accuracy']:.3f}",
              file=sys.stderr)
    if getattr(args, "tensorboard", None) is not None:
        print(f"TensorBoard logs in {args.tensorboard}: tensorboard --logdir {args.tensorboard}", file=sys.stderr)
    return 0


# -- demo -----------------------------------------------------------------------
def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="create the two demo runs if they are absent")
    p.add_argument("--runs-root", type=local_runs_root, default=str(runs_root_arg()))
    p.add_argument("--force", action="store_true", help="recreate them")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from core.training.demo import ensure_demo_runs

    t0 = time.perf_counter()
    made = ensure_demo_runs(args.runs_root, force=args.force, bar_factory=_bar)
    if made:
        print(f"demo runs created in {time.perf_counter() - t0:.0f} s: {', '.join(made)}", file=sys.stderr)
    else:
        print(f"demo runs already present in {args.runs_root}", file=sys.stderr)
    return 0


# -- sweep / export -------------------------------------------------------------
def _open(args):
    from core.run.remote import url_of
    from core.run.runs import Run

    url = url_of(args.run, args.runs_root)
    if url is not None:  # object storage: read through a local mirror (core.run.remote)
        return _open_url(url)
    run = Run(_run_path(args.run, args.runs_root))
    try:
        _ = run.manifest
    except RunError as e:
        raise UserError(str(e)) from None
    run.history()  # a damaged history is reported (a warning) with the sweep's other problems
    return run


def _open_url(url: str):
    from core.run.remote import open_url

    bar = _bar(0, "fetching checkpoints", unit="ckpt")

    def progress(done: int, total: int, msg: str) -> None:
        bar.total, bar.n = total, done
        bar.refresh()

    try:
        return open_url(url, progress)
    except RunError as e:
        raise UserError(str(e)) from None
    finally:
        bar.close()


def _probe_set(run, paths: list[Path] | None, fit: str):
    """The probe set to sweep; image files are checked here, before TensorFlow is imported."""
    from core.run.images import ImageError, load_probe_image

    if not paths:
        run.probes()  # a damaged probes.npz is refused here, before the model is loaded
        from core.engine.engine import run_probe_set

        return run_probe_set(run)
    from core.run.images import default_fit

    h, w, c = run.manifest.input_shape
    fit = fit or default_fit(run.manifest.raw, run.manifest.external_checkpoints is not None)
    imgs = []
    for p in paths:
        try:
            imgs.append(load_probe_image(p, (h, w), channels=c, fit=fit, as_float=fit == "resize"))
        except ImageError as e:
            raise UserError(f"{p}: {e}") from None
    import numpy as np

    from core.engine.engine import ProbeSet

    return ProbeSet(tuple(f"file:{Path(p).name}" for p in paths), np.stack(imgs), np.full(len(imgs), -1, np.int64))


def run_sweep_cli(args):
    """Sweep with a progress bar; shared by sweep, export and diagnose."""
    run = _open(args)
    probes = _probe_set(run, getattr(args, "probe", None), getattr(args, "fit", None))
    from core.analysis.sweep import SweepOptions  # imports TensorFlow: after the cheap checks
    extra = {"engine": engine_cli(args, run)} if _in_process(args) else {}  # its notes before the bar
    n = len(run.checkpoints())
    bar = _bar(n, f"sweep {run.name}", unit="ckpt")

    def progress(done: int, total: int, msg: str) -> None:
        bar.n = done
        bar.set_postfix_str(msg, refresh=False)
        bar.refresh()

    from core.run.loading import ModelLoadError

    try:
        res = _sweeper(args, run)(run, probes, progress=progress, **extra,
                    options=SweepOptions(train_mode=not getattr(args, "fast", False),
                                         gradients=not getattr(args, "fast", False)))
    except (RunError, ModelLoadError) as e:
        raise UserError(str(e)) from None
    finally:
        bar.close()
    for p in res.problems:
        print(f"warning: {p}", file=sys.stderr)
    return run, res


def _in_process(args) -> bool:
    """Whether the sweep runs in this process (no --ray, --shard or --merge), where the model options apply."""
    remote = any(getattr(args, f, None) for f in ("ray", "shard", "merge"))
    if remote and (getattr(args, "trust_code", False) or getattr(args, "custom_objects", None)):
        raise UserError("--trust-code and --custom-objects apply to a sweep in this process; they cannot be "
                        "combined with --ray, --shard or --merge")
    return not remote


def engine_cli(args, run):
    """The run's extraction engine with the command's --trust-code / --custom-objects; says once what was left out."""
    from core.engine.engine import RunEngine
    from core.engine.graph import ModelGraphError
    from core.run.custom_objects import CustomObjectsError, load_custom_objects
    from core.run.loading import ModelLoadError

    trust = bool(getattr(args, "trust_code", False))
    source = getattr(args, "custom_objects", None)
    try:
        custom = load_custom_objects(source, trust) if source else None
        engine = RunEngine(run, trust=trust, custom_objects=custom)
    except (CustomObjectsError, ModelLoadError, ModelGraphError) as e:
        raise UserError(str(e)) from None
    if engine.dropped:
        print("note: left out of the model (training-only objects whose code is not here; the forward pass "
              f"does not use them): {', '.join(engine.dropped)}", file=sys.stderr)
    return engine


def _sweeper(args, run):
    """``sweep``, or its Ray / shard / merge form when ``python -m core sweep`` was given those flags."""
    from core.analysis.raysweep import sweeper
    from core.run.remote import url_of

    ref = url_of(args.run, args.runs_root) or str(run.path.resolve())
    return sweeper(ref, ray=getattr(args, "ray", None), workers=getattr(args, "ray_workers", None),
                   shard=getattr(args, "shard", None), out=getattr(args, "out", None),
                   merge=getattr(args, "merge", None) or ())


def _add_run_args(p, probes: bool = True) -> None:
    from core.run.custom_objects import add_model_args
    from core.run.remote import as_root, runs_root_arg

    p.add_argument("run", help="run name under --runs-root, a path to a run folder, or a URL (s3://, gs://, ...)")
    p.add_argument("--runs-root", type=as_root, default=runs_root_arg(), help="folder or URL of runs")
    add_model_args(p)
    if probes:
        p.add_argument("--probe", type=Path, nargs="*", help="probe image files (default: the run's probe set)")
        p.add_argument("--fit", choices=["resize", "crop", "pad"], default=None,
                       help="how probe images are fitted to the input: resize (bilinear stretch, as "
                            "tf.image.resize), crop (centre crop) or pad (letterbox); default: the run's choice")
        p.add_argument("--fast", action="store_true", help="skip the training-mode pass and gradient norms")


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="compute (and cache) all statistics of a run across its checkpoints")
    _add_run_args(p)
    d = p.add_argument_group("past one machine (docs/distributed.md)")
    d.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="spread checkpoints over Ray workers: a local cluster, or the cluster at ADDRESS")
    d.add_argument("--ray-workers", type=int, help="CPUs of the local Ray cluster (default: all)")
    d.add_argument("--shard", metavar="I/N", help="sweep only shard I (0-based) of N, e.g. a Slurm array task")
    d.add_argument("--out", type=Path, help="with --shard: write the shard's results to this folder for --merge")
    d.add_argument("--merge", type=Path, nargs="+", metavar="DIR", help="merge shard folders, then sweep the rest")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    run, res = run_sweep_cli(args)
    print(f"{run.name}: {len(res.mini_epochs)} checkpoints, {len(res.layer_order)} taps, "
          f"{len(res.se_blocks)} SE blocks, {len(res.probe_ids)} probe images; "
          f"tables cached in {run.cache_dir}")
    return 0


def add_export(sub) -> None:
    from core.analysis.sweepcache import TABLES, WEIGHT_TABLES  # (not sweep: it imports TensorFlow)

    p = sub.add_parser("export", help="export the statistics tables to CSV or Parquet, or as TensorBoard logs")
    _add_run_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--format", choices=["csv", "parquet", "tensorboard"], default="csv",
                   help="tensorboard: event files in --out; open them with `tensorboard --logdir OUT`")
    p.add_argument("--tables", nargs="*", choices=[*TABLES, *WEIGHT_TABLES], help="default: all")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    run, res = run_sweep_cli(args)
    if args.format == "tensorboard":
        write_tensorboard(run, res, args.out)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.tables or list(res.tables):
        df = res.tables.get(name)
        if df is None or df.empty:
            print(f"{name}: empty, skipped", file=sys.stderr)
            continue
        df = df.assign(probe_id=df["probe"].map(dict(enumerate(res.probe_ids)))) if "probe" in df else df
        path = args.out / f"{run.name}.{name}.{args.format}"
        if args.format == "csv":
            df.to_csv(path, index=False)
        else:
            df.to_parquet(path, index=False)
        print(f"wrote {path} ({len(df)} rows)")
    return 0


def write_tensorboard(run, res, out: Path) -> None:
    """The run's statistics as TensorBoard event files in ``out`` (step = mini-epoch), and how to open them."""
    from core.training.tensorboard import export_tensorboard

    try:
        s = export_tensorboard(run, res, out)
    except OSError as e:
        raise UserError(f"cannot write TensorBoard logs to {out}: {e}") from None
    print(f"wrote {s.scalars} scalars and {s.histograms} histograms ({s.tags} tags) to {s.logdir}; "
          f"open them with: tensorboard --logdir {s.logdir}")


# -- diagnose / report -------------------------------------------------------------
def add_diagnose(sub) -> None:
    """``python -m core diagnose RUN [--json]``."""
    p = sub.add_parser("diagnose", help="sweep a run (if not cached) and list what looks wrong",
                       description="Sweep every checkpoint (cached in the run) and print the findings of the "
                                   "diagnostic rules, most severe first (see docs/diagnostics.md).")
    _add_run_args(p)
    p.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    p.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args) -> int:
    import json

    from core.analysis.diagnose import diagnose, format_findings, thresholds_for

    run, result = run_sweep_cli(args)
    findings = diagnose(result, run.history(), run.manifest, thresholds_for(run))
    if args.json:
        print(json.dumps([f.to_dict() for f in findings], indent=2))
    else:
        sys.stdout.write(format_findings(findings, run.name))
    return 0


def add_report(sub) -> None:
    """``python -m core report RUN [--vs RUN2 ...] --out report.html``."""
    p = sub.add_parser("report", help="write a self-contained HTML report of a run (optionally vs other runs)",
                       description="Sweep the run (cached) and write one HTML file with its configuration, "
                                   "findings and charts (inline SVG, no external resources).")
    _add_run_args(p)
    p.add_argument("--vs", action="append", default=[], metavar="RUN",
                   help="another run to compare with (repeatable)")
    p.add_argument("--out", type=Path, required=True, help="output HTML file")
    p.set_defaults(func=cmd_report)


def cmd_report(args) -> int:
    from core.render.report import collect, report_html
    from core.run.atomic import atomic_write_text

    from core.analysis.trajectory import report_filmstrip

    run, result = run_sweep_cli(args)
    try:
        film = report_filmstrip(run, result)
    except Exception as e:  # the filmstrip is an extra: the report must not be lost for it
        print(f"no filmstrip: {e}", file=sys.stderr)
        film = None
    reps = [collect(run, result, film)]
    for other in args.vs:
        orun, ores = run_sweep_cli(argparse.Namespace(**{**vars(args), "run": other}))
        reps.append(collect(orun, ores))
    print("drawing the charts…", file=sys.stderr)
    text = report_html(reps[0], reps[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, text)
    n = len(reps[0].findings)
    print(f"wrote {args.out} ({len(text) / 1e6:.1f} MB; {n} finding{'s' if n != 1 else ''} for {run.name})")
    return 0


COMMANDS: list[Callable[[Any], None]] = [add_train, add_demo, add_sweep, add_export, add_import, add_diagnose,
                                         add_report, add_repair]
