"""``python -m core repair RUN``: rebuild a damaged manifest or history from what the run still holds.

The plan is computed first and shown; writing keeps every damaged file beside the new one
(``manifest.json.damaged-<time>``) and replaces it atomically. Evidence, in order: the fields of
the damaged manifest that still validate, the job launcher's ``job.json``, the input shape
declared by ``probes.npz`` or ``model.keras`` (read from its config, without TensorFlow), the
checkpoints on disk and the history rows that still parse.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core.run.atomic import atomic_write_text
from core.run.npzfile import NpzError, members
from core.run.runs import Run
from core.run.schema import (ARCHITECTURE, HISTORY, HISTORY_COLUMNS, MANIFEST, PROBES, RESUME_DIR, RunError,
                             format_history, make_manifest, parse_history, parse_manifest)

JOB = "job.json"  # written by core.training.jobs before a job starts
TRAIN_CONFIG = "train_config.json"  # in RESUME_DIR, written by core.training.trainer


@dataclass(frozen=True)
class PlannedFile:
    """One file ``repair`` will (re)write: its name in the run, new content and why."""

    name: str
    content: str
    reason: str


@dataclass(frozen=True)
class RepairPlan:
    run: Path
    files: tuple[PlannedFile, ...]
    notes: tuple[str, ...]

    def describe(self) -> str:
        if not self.files:
            return f"{self.run}: manifest and history are readable; nothing to repair"
        out = []
        for f in self.files:
            lines = f.content.splitlines()
            shown = lines if len(lines) <= 40 else [*lines[:20], f"... ({len(lines) - 25} more lines)", *lines[-5:]]
            out.append(f"== {self.run / f.name}: {f.reason}\n" + "\n".join(shown))
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)


def plan_repair(run_dir: str | Path) -> RepairPlan:
    """What ``apply_repair`` would write; reads only."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(run_dir, "no such run folder")
    files, notes = [], []
    run = Run(run_dir)
    try:
        manifest = run.manifest.raw
    except RunError as e:
        manifest = _rebuild_manifest(run_dir, notes)
        files.append(PlannedFile(MANIFEST, json.dumps(manifest, indent=2) + "\n", f"rebuilt ({e.problem})"))
    hist = _history_to_write(run_dir, manifest, notes)
    if hist is not None:
        files.append(hist)
    return RepairPlan(run_dir, tuple(files), tuple(notes))


def apply_repair(plan: RepairPlan) -> list[str]:
    """Write the plan's files atomically, each damaged original kept as ``<name>.damaged-<time>``."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    done = []
    for f in plan.files:
        target = plan.run / f.name
        if target.exists() or target.is_symlink():
            backup = target.with_name(f"{f.name}.damaged-{stamp}")
            shutil.copyfile(target, backup, follow_symlinks=False)
            done.append(f"kept the damaged {f.name} as {backup.name}")
        atomic_write_text(target, f.content)  # replaces a symlink itself, never its target
        done.append(f"wrote {target}")
    return done


# -- manifest -----------------------------------------------------------------------------------
def _salvage(run_dir: Path) -> dict[str, Any]:
    try:
        raw = json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _saved_training(run_dir: Path) -> dict[str, Any]:
    """The training options the trainer (``resume/train_config.json``) or the job launcher kept."""
    for name, key in ((Path(RESUME_DIR) / TRAIN_CONFIG, None), (Path(JOB), "config")):
        try:
            cfg = json.loads(Run(run_dir).file(name).read_text())
            cfg = cfg.get(key) if key else cfg
        except (OSError, ValueError, AttributeError, RunError):
            continue
        if isinstance(cfg, dict) and cfg:
            return cfg
    return {}


def _rebuild_manifest(run_dir: Path, notes: list[str]) -> dict[str, Any]:
    old = _salvage(run_dir)
    training = old["training"] if isinstance(old.get("training"), dict) else _saved_training(run_dir)
    shape = _input_shape(run_dir)
    if shape is None:
        raise RunError(run_dir, f"cannot rebuild the manifest: neither {PROBES} nor {ARCHITECTURE} says the "
                                "input shape")
    pre = {"kind": str(training.get("preprocessing", "scale01"))} if training else {"kind": "scale01"}
    base = make_manifest(run_dir.name, shape, preprocessing=pre, training=training,
                         mini_epoch_images=_mini_epoch_images(training))
    base.pop("external_checkpoints")
    kept = []
    for k, v in old.items():  # keep every old field that still validates
        if k in ("format", "format_version") or base.get(k) == v:
            continue
        try:
            parse_manifest({**base, k: v}, run_dir / MANIFEST)
        except RunError:
            continue
        base[k] = v
        kept.append(k)
    base["repaired"] = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "kept_fields": kept}
    parse_manifest(base, run_dir / MANIFEST)
    if not base.get("training"):
        notes.append("the training options were not recoverable: resume with the options the run was trained "
                     "with (they are checked against the checkpoints)")
    if "input" not in kept:
        notes.append(f"input preprocessing set to {base['input']['preprocessing']}: edit the manifest if the "
                     "model expects another")
    if not base.get("class_names"):
        notes.append("class names unknown")
    return base


def _mini_epoch_images(training: dict[str, Any]) -> int:
    try:
        return int(training.get("mini_epoch_images") or 0)
    except (TypeError, ValueError):
        return 0


def _input_shape(run_dir: Path) -> tuple[int, int, int] | None:
    """(H, W, C) declared by the probe set, else by the Keras model's config (no TensorFlow needed)."""
    try:
        x = members(run_dir / PROBES).get("x")
        if x is not None and len(x.shape) == 4:
            return x.shape[1:]  # type: ignore[return-value]
    except (OSError, NpzError, zipfile.BadZipFile):
        pass
    try:
        with zipfile.ZipFile(Run(run_dir).file(ARCHITECTURE)) as z:
            cfg = json.loads(z.read("config.json"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, RunError):
        return None
    for layer in (cfg.get("config") or {}).get("layers") or []:
        lc = layer.get("config") or {}
        shape = lc.get("batch_shape") or lc.get("batch_input_shape")
        if layer.get("class_name") == "InputLayer" and isinstance(shape, list) and len(shape) == 4:
            if all(isinstance(s, int) for s in shape[1:]):
                return tuple(shape[1:])  # type: ignore[return-value]
    return None


# -- history ------------------------------------------------------------------------------------
def _history_to_write(run_dir: Path, manifest: dict[str, Any], notes: list[str]) -> PlannedFile | None:
    run = Run(run_dir, parse_manifest(manifest, run_dir / MANIFEST))
    p = run_dir / HISTORY
    try:
        df, problems = run.history_strict()
        reason = "; ".join(problems)
    except RunError as e:
        df, reason = _readable_rows(p), e.problem
    ckpts = [c.mini_epoch for c in run.checkpoints()]
    missing = [k for k in ckpts if k > 0 and k not in set(df["mini_epoch"].tolist())]
    if not reason and not missing:
        return None
    if missing:
        mie = _mini_epoch_images(manifest.get("training") or {}) or int(manifest.get("mini_epoch_images") or 0)
        rows = [{**{c: math.nan for c in HISTORY_COLUMNS}, "mini_epoch": k,
                 "images_seen": k * mie if mie else math.nan} for k in missing]
        df = pd.concat([df, pd.DataFrame(rows)], ignore_index=True) if len(df) else pd.DataFrame(rows)
        df = df.sort_values("mini_epoch").reset_index(drop=True)
        notes.append(f"history rows for checkpoints {_span(missing)} rebuilt with images seen only "
                     "(loss and accuracy unknown)")
    why = reason or ("rows missing" if p.exists() else "missing")
    return PlannedFile(HISTORY, format_history(df), f"rebuilt ({why})")


def _readable_rows(p: Path) -> pd.DataFrame:
    """Rows of a history whose header is damaged, read with the standard columns; empty when none fit."""
    empty = pd.DataFrame(columns=list(HISTORY_COLUMNS))
    if p.is_symlink():
        return empty  # a link leaving the run: its target is not read
    try:
        lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return empty
    body = "\n".join([",".join(HISTORY_COLUMNS), *lines[1:]]) + "\n"
    df, _ = parse_history(body, p)
    return df


def _span(nums: list[int]) -> str:
    return f"{nums[0]}..{nums[-1]}" if len(nums) > 2 else ", ".join(map(str, nums))


# -- command line -------------------------------------------------------------------------------
def add_repair(sub) -> None:
    from core.run.runs import runs_root_from_env

    p = sub.add_parser("repair", help="rebuild a damaged manifest or history from the checkpoints and model")
    p.add_argument("run", help="run name under --runs-root, or a path to a run folder")
    p.add_argument("--runs-root", type=Path, default=runs_root_from_env())
    p.add_argument("--dry-run", action="store_true", help="show what would be written, write nothing")
    p.set_defaults(func=cmd_repair)


def cmd_repair(args) -> int:
    run_dir = Path(args.run) if ("/" in args.run or Path(args.run).is_dir()) else args.runs_root / args.run
    plan = plan_repair(run_dir)
    print(plan.describe())
    if args.dry_run or not plan.files:
        return 0
    for line in apply_repair(plan):
        print(line, file=sys.stderr)
    return 0
