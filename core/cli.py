"""Sub-commands of ``python -m core``; each ``add_*`` registers one argparse sub-parser."""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Callable

from core.runs import RunError, runs_root_from_env


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
    from core.models import ArchConfig
    from core.trainer import TrainConfig

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
    p.add_argument("--mini-epochs", type=int, default=t.mini_epochs)
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
    from core.models import ArchConfig
    from core.trainer import TrainConfig

    arch = dataclasses.replace(ArchConfig(), input_size=args.input_size, num_classes=args.num_classes,
                               widths=args.widths, convs=args.convs, activation=args.activation,
                               batchnorm=args.batchnorm, se=args.se, se_ratio=args.se_ratio,
                               se_gate_bias=args.se_gate_bias, near_one_weight=args.near_one, l2=args.l2)
    return TrainConfig(arch=arch, dataset=args.dataset, train_images=args.train_images,
                       val_images=args.val_images, probe_images=args.probe_images, optimizer=args.optimizer,
                       learning_rate=args.lr, momentum=args.momentum, lr_schedule=args.lr_schedule,
                       batch_size=args.batch_size, mini_epoch_images=args.mini_epoch_images,
                       mini_epochs=args.mini_epochs, augment=args.augment, seed=args.seed)


def cmd_train(args) -> int:
    from core.trainer import train

    try:
        cfg = train_config_from_args(args)
    except ValueError as e:
        raise UserError(str(e)) from None
    run_dir = _run_path(args.name, args.runs_root)
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
    from core.demo import ensure_demo_runs

    t0 = time.perf_counter()
    made = ensure_demo_runs(args.runs_root, force=args.force, bar_factory=_bar)
    if made:
        print(f"demo runs created in {time.perf_counter() - t0:.0f} s: {', '.join(made)}", file=sys.stderr)
    else:
        print(f"demo runs already present in {args.runs_root}", file=sys.stderr)
    return 0


COMMANDS: list[Callable[[Any], None]] = [add_train, add_demo]
