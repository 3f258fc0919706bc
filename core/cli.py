"""Sub-commands of ``python -m core``; each ``add_*`` registers one argparse sub-parser."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

from core.run.runs import RunError, runs_root_from_env


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


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
def add_train(sub) -> None:
    from core.training.models import ArchConfig
    from core.training.trainer import TrainConfig

    a, t = ArchConfig(), TrainConfig()
    p = sub.add_parser("train", help="train the built-in network, one checkpoint per mini-epoch")
    p.add_argument("name", help="run name (folder under --runs-root) or a path")
    p.add_argument("--runs-root", type=Path, default=runs_root_from_env())
    p.add_argument("--resume", action="store_true", help="continue after the last complete checkpoint")
    p.add_argument("--dataset", default=t.dataset, help="'synthetic' or an image folder (one sub-folder per class)")
    p.add_argument("--train-images", type=int, default=t.train_images)
    p.add_argument("--val-images", type=int, default=t.val_images)
    p.add_argument("--probe-images", type=int, default=t.probe_images)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default=t.optimizer)
    p.add_argument("--lr", type=float, default=t.learning_rate)
    p.add_argument("--momentum", type=float, default=t.momentum)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default=t.lr_schedule)
    p.add_argument("--batch-size", type=int, default=t.batch_size)
    p.add_argument("--mini-epoch-images", type=int, default=t.mini_epoch_images)
    p.add_argument("--mini-epochs", type=int, default=None,
                   help=f"total mini-epochs (default {t.mini_epochs}; with --resume: the run's planned total)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=t.augment)
    p.add_argument("--seed", type=int, default=t.seed)
    p.add_argument("--input-size", type=int, default=a.input_size)
    p.add_argument("--num-classes", type=int, default=a.num_classes)
    p.add_argument("--widths", type=lambda s: tuple(int(v) for v in s.split(",")), default=a.widths,
                   help="channels per conv block, e.g. 24,32,48,64,96")
    p.add_argument("--convs", type=lambda s: tuple(int(v) for v in s.split(",")), default=a.convs,
                   help="conv layers per block, e.g. 2,2,2,2,1")
    p.add_argument("--activation", choices=["relu", "elu", "sigmoid"], default=a.activation)
    p.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=a.batchnorm)
    p.add_argument("--se", action=argparse.BooleanOptionalAction, default=a.se)
    p.add_argument("--se-ratio", type=int, default=a.se_ratio)
    p.add_argument("--se-gate-bias", type=float, default=a.se_gate_bias)
    p.add_argument("--near-one", type=float, default=a.near_one_weight,
                   help="weight of the near-1 SE gate regulariser weight*mean((1-gate)**2)")
    p.add_argument("--l2", type=float, default=a.l2)
    p.set_defaults(func=cmd_train)


def train_config_from_args(args) -> "Any":
    from core.training.models import ArchConfig
    from core.training.trainer import TrainConfig

    arch = dataclasses.replace(ArchConfig(), input_size=args.input_size, num_classes=args.num_classes,
                               widths=args.widths, convs=args.convs, activation=args.activation,
                               batchnorm=args.batchnorm, se=args.se, se_ratio=args.se_ratio,
                               se_gate_bias=args.se_gate_bias, near_one_weight=args.near_one, l2=args.l2)
    return TrainConfig(arch=arch, dataset=args.dataset, train_images=args.train_images,
                       val_images=args.val_images, probe_images=args.probe_images, optimizer=args.optimizer,
                       learning_rate=args.lr, momentum=args.momentum, lr_schedule=args.lr_schedule,
                       batch_size=args.batch_size, mini_epoch_images=args.mini_epoch_images,
                       mini_epochs=args.mini_epochs if args.mini_epochs is not None else TrainConfig().mini_epochs,
                       augment=args.augment, seed=args.seed)


def cmd_train(args) -> int:
    from core.training.trainer import train

    try:
        cfg = train_config_from_args(args)
    except ValueError as e:
        raise UserError(str(e)) from None
    run_dir = _run_path(args.name, args.runs_root)
    if args.resume and args.mini_epochs is None:  # continue to the total the run was planned with
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
        run = train(cfg, run_dir, resume=args.resume, progress=progress, handle_signals=True)
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
    return 0


# -- demo -----------------------------------------------------------------------
def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="create the two demo runs if they are absent")
    p.add_argument("--runs-root", type=Path, default=runs_root_from_env())
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
    from core.run.runs import Run

    run = Run(_run_path(args.run, args.runs_root))
    try:
        _ = run.manifest
    except RunError as e:
        raise UserError(str(e)) from None
    return run


def _probe_set(run, paths: list[Path] | None, fit: str):
    from core.engine.engine import ProbeSet, run_probe_set
    from core.run.images import ImageError, load_probe_image

    if not paths:
        return run_probe_set(run)
    h, w, c = run.manifest.input_shape
    imgs = []
    for p in paths:
        try:
            imgs.append(load_probe_image(p, (h, w), channels=c, fit=fit))
        except ImageError as e:
            raise UserError(f"{p}: {e}") from None
    import numpy as np

    return ProbeSet(tuple(f"file:{Path(p).name}" for p in paths), np.stack(imgs), np.full(len(imgs), -1, np.int64))


def run_sweep_cli(args):
    """Sweep with a progress bar; shared by sweep, export and diagnose."""
    from core.analysis.sweep import SweepOptions, sweep

    run = _open(args)
    probes = _probe_set(run, getattr(args, "probe", None), getattr(args, "fit", "crop"))
    n = len(run.checkpoints())
    bar = _bar(n, f"sweep {run.name}", unit="ckpt")

    def progress(done: int, total: int, msg: str) -> None:
        bar.n = done
        bar.set_postfix_str(msg, refresh=False)
        bar.refresh()

    try:
        res = sweep(run, probes, progress=progress,
                    options=SweepOptions(train_mode=not getattr(args, "fast", False),
                                         gradients=not getattr(args, "fast", False)))
    except RunError as e:
        raise UserError(str(e)) from None
    finally:
        bar.close()
    for p in res.problems:
        print(f"warning: {p}", file=sys.stderr)
    return run, res


def _add_run_args(p, probes: bool = True) -> None:
    p.add_argument("run", help="run name under --runs-root, or a path to a run folder")
    p.add_argument("--runs-root", type=Path, default=runs_root_from_env())
    if probes:
        p.add_argument("--probe", type=Path, nargs="*", help="probe image files (default: the run's probe set)")
        p.add_argument("--fit", choices=["crop", "pad"], default="crop", help="how images are fitted to the input")
        p.add_argument("--fast", action="store_true", help="skip the training-mode pass and gradient norms")


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="compute (and cache) all statistics of a run across its checkpoints")
    _add_run_args(p)
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    run, res = run_sweep_cli(args)
    print(f"{run.name}: {len(res.mini_epochs)} checkpoints, {len(res.layer_order)} taps, "
          f"{len(res.se_blocks)} SE blocks, {len(res.probe_ids)} probe images; "
          f"tables cached in {run.cache_dir}")
    return 0


def add_export(sub) -> None:
    from core.analysis.sweep import TABLES, WEIGHT_TABLES

    p = sub.add_parser("export", help="export the statistics tables to CSV or Parquet")
    _add_run_args(p)
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--format", choices=["csv", "parquet"], default="csv")
    p.add_argument("--tables", nargs="*", choices=[*TABLES, *WEIGHT_TABLES], help="default: all")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    run, res = run_sweep_cli(args)
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


def _lazy(module: str, fn: str) -> Callable[[Any], None]:
    """Register a sub-command defined in another module, skipping it if that module is absent."""
    def register(sub) -> None:
        import importlib

        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            return
        getattr(mod, fn)(sub)

    return register


COMMANDS: list[Callable[[Any], None]] = [add_train, add_demo, add_sweep, add_export,
                                         _lazy("core.run.importer", "add_import"),
                                         _lazy("core.analysis.diagnose", "add_diagnose"),
                                         _lazy("core.render.report", "add_report")]
