"""Mini-epoch trainer for the built-in network: writes a run directory as it trains."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.atomic import atomic_write_json
from core.models import ArchConfig
from core.runs import RESUME_DIR, Run, RunError, RunWriter

STATUS = "train_status.json"
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; stored in the manifest's ``training`` field."""

    arch: ArchConfig = field(default_factory=ArchConfig)
    dataset: str = "synthetic"  # "synthetic" or a folder with one sub-folder per class
    train_images: int = 12000  # size of the synthetic training pool (folders use all images)
    val_images: int = 500
    probe_images: int = 32
    optimizer: str = "adam"
    learning_rate: float = 5e-4
    momentum: float = 0.9
    lr_schedule: str = "constant"
    batch_size: int = 64
    mini_epoch_images: int = 2000
    mini_epochs: int = 20
    augment: bool = False
    seed: int = 0
    preprocessing: str = "scale01"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}")
        if self.batch_size < 1 or self.mini_epoch_images < self.batch_size:
            raise ValueError("mini_epoch_images must be at least one batch")
        if self.mini_epochs < 0 or not (self.learning_rate > 0):
            raise ValueError("mini_epochs must be >= 0 and learning_rate > 0")

    @property
    def steps_per_mini_epoch(self) -> int:
        return self.mini_epoch_images // self.batch_size

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["arch"] = self.arch.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training options {sorted(unknown)}; valid: {sorted(names)}")
        if isinstance(d.get("arch"), dict):
            d["arch"] = ArchConfig.from_dict(d["arch"])
        return cls(**d)


@dataclass(frozen=True)
class TrainData:
    """Arrays for one training run: uint8 images (N, H, W, C) and int64 labels (N,)."""

    x_train: np.ndarray | list[str]
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_probe: np.ndarray
    y_probe: np.ndarray
    class_names: list[str]
    description: dict[str, Any]


def load_data(cfg: TrainConfig) -> TrainData:
    """Generate the synthetic set or index an image folder; probes and val are fixed by the seed."""
    from core import data

    size = cfg.arch.input_size
    if cfg.dataset == "synthetic":
        scfg = data.SyntheticConfig(num_classes=cfg.arch.num_classes, image_size=size, seed=cfg.seed)
        xt, yt = data.make_synthetic(scfg, cfg.train_images, "train")
        xv, yv = data.make_synthetic(scfg, cfg.val_images, "val")
        xp, yp = data.make_synthetic(scfg, cfg.probe_images, "probe")
        desc = {"kind": "synthetic", **dataclasses.asdict(scfg), "train_images": cfg.train_images,
                "val_images": cfg.val_images}
        return TrainData(xt, yt, xv, yv, xp, yp, data.class_names(scfg), desc)
    paths, labels, names = data.list_image_folder(cfg.dataset)
    if len(names) != cfg.arch.num_classes:
        raise ValueError(f"{cfg.dataset} has {len(names)} classes but the network is built for "
                         f"{cfg.arch.num_classes}; set num_classes to {len(names)}")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(paths))
    n_val = min(cfg.val_images, len(paths) // 5)
    n_probe = min(cfg.probe_images, max(1, len(paths) // 10))
    val_idx, probe_idx, train_idx = order[:n_val], order[n_val:n_val + n_probe], order[n_val + n_probe:]
    xv = _load_images([paths[i] for i in val_idx], size, cfg.arch.input_channels)
    xp = _load_images([paths[i] for i in order[:n_probe]], size, cfg.arch.input_channels)
    y = np.asarray(labels, np.int64)
    desc = {"kind": "folder", "root": str(Path(cfg.dataset).resolve()), "images": len(paths),
            "classes": len(names)}
    return TrainData([paths[i] for i in train_idx], y[train_idx], xv, y[val_idx], xp, y[order[:n_probe]],
                     names, desc)


def _load_images(paths: list[str], size: int, channels: int) -> np.ndarray:
    from core.images import load_probe_image

    return np.stack([load_probe_image(p, (size, size), channels=channels) for p in paths]) if paths else \
        np.zeros((0, size, size, channels), np.uint8)


def make_optimizer(cfg: TrainConfig, total_steps: int):
    import keras

    lr: Any = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, max(1, total_steps))
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    return keras.optimizers.SGD(lr, momentum=cfg.momentum)


def write_status(run_dir: Path, **status: Any) -> None:
    atomic_write_json(run_dir / STATUS, {"updated": time.time(), "pid": os.getpid(), **status})


def read_status(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / STATUS).read_text())
    except (OSError, ValueError):
        return None


ProgressFn = Callable[[dict[str, Any]], None]


def train(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False, progress: ProgressFn | None = None,
          strategy=None, handle_signals: bool = False) -> Run:
    """Train the built-in network, writing checkpoint ``k`` after mini-epoch ``k``.

    With ``resume`` the run continues after its last complete checkpoint (one
    with a history row): later files are discarded, weights and optimizer
    state are restored, and training runs up to ``cfg.mini_epochs`` in total.
    ``progress`` receives status dicts (images done, rate, ETA) about once a
    second; ``strategy`` is an optional ``tf.distribute`` strategy.
    """
    import keras
    import tensorflow as tf

    from core import data as data_mod
    from core.models import build_seed_net
    from core.recorder import RunRecorder, restore_optimizer_state
    from core.runs import read_npz_weights, assign_weights

    run_dir = Path(run_dir)
    start_me, start_images, start_wall = 0, 0, 0.0
    if resume:
        run = Run(run_dir)
        cfg = dataclasses.replace(TrainConfig.from_dict(run.manifest.training), mini_epochs=cfg.mini_epochs)
        done = run.complete_mini_epochs()
        if not done:
            raise RunError(run_dir, "nothing to resume: no complete checkpoint")
        start_me = done[-1]
        RunWriter(run_dir).truncate_after(start_me)
        hist = run.history()
        if start_me > 0:
            last = hist[hist["mini_epoch"] == start_me].iloc[0]
            start_images, start_wall = int(last["images_seen"]), float(last["wall_time"])
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(run_dir, "a run with this name already exists; choose another name or use --resume")

    remaining = cfg.mini_epochs - start_me
    if remaining <= 0:
        return Run(run_dir)
    data = load_data(cfg)
    scope = strategy.scope() if strategy is not None else _nullcontext()
    total_steps = cfg.steps_per_mini_epoch * cfg.mini_epochs
    with scope:
        model = build_seed_net(cfg.arch, seed=cfg.seed)
        opt = make_optimizer(cfg, total_steps)
        model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        if resume:
            assign_weights(model, read_npz_weights(Run(run_dir).checkpoint(start_me).path))
            opt_file = run_dir / RESUME_DIR / f"opt_{start_me:06d}.npz"
            if opt_file.exists():
                with np.load(opt_file, allow_pickle=False) as z:
                    restore_optimizer_state(opt, model, {k: z[k] for k in z.files})
    spec = {"kind": cfg.preprocessing}
    ds = data_mod.make_dataset(data.x_train, data.y_train, batch_size=cfg.batch_size,
                               image_size=cfg.arch.input_size, preprocessing=spec, augment=cfg.augment,
                               shuffle=True, seed=cfg.seed + start_me, repeat=True)
    from core.preprocess import PreprocessSpec, apply_preprocessing

    pspec = PreprocessSpec.from_dict(spec)
    val = (apply_preprocessing(data.x_val, pspec), data.y_val) if len(data.x_val) else None
    # A mini-epoch is a whole number of batches, so checkpoints fall on Keras epoch ends.
    recorder = RunRecorder(run_dir, cfg.steps_per_mini_epoch * cfg.batch_size, cfg.batch_size,
                           probes=(data.x_probe, data.y_probe), preprocessing=spec, validation_data=val,
                           training_config=cfg.to_dict(), dataset=data.description,
                           class_names=data.class_names, start_mini_epoch=start_me,
                           start_images=start_images, start_wall_time=start_wall, save_optimizer=True)
    watcher = _Progress(run_dir, cfg, start_me, progress)
    stopper = _SignalStop() if handle_signals else None
    callbacks = [recorder, watcher] + ([stopper] if stopper else [])
    try:
        model.fit(ds, steps_per_epoch=cfg.steps_per_mini_epoch, epochs=remaining, callbacks=callbacks, verbose=0)
    except BaseException as e:
        write_status(run_dir, state="failed", error=f"{type(e).__name__}: {e}", **watcher.snapshot())
        raise
    finally:
        if stopper:
            stopper.restore()
    state = "cancelled" if stopper and stopper.stopped else "done"
    write_status(run_dir, state=state, **watcher.snapshot())
    return Run(run_dir)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def _keras_callback_base():
    import keras

    return keras.callbacks.Callback


class _Progress(_keras_callback_base()):
    """Reports images done, rate and ETA to a function and to ``train_status.json`` (~1/s)."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, start_me: int, fn: ProgressFn | None):
        super().__init__()
        self.run_dir, self.cfg, self.fn = run_dir, cfg, fn
        self.total = cfg.mini_epochs * cfg.steps_per_mini_epoch * cfg.batch_size
        self.done0 = start_me * cfg.steps_per_mini_epoch * cfg.batch_size
        self.done = self.done0
        self._t0 = time.perf_counter()
        self._last = 0.0
        self._epoch = 0

    def snapshot(self) -> dict[str, Any]:
        el = time.perf_counter() - self._t0
        rate = (self.done - self.done0) / el if el > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else math.nan
        per_me = self.cfg.steps_per_mini_epoch * self.cfg.batch_size
        return {"images_done": self.done, "images_total": self.total, "mini_epoch": self.done // per_me,
                "mini_epochs": self.cfg.mini_epochs, "images_per_s": round(rate, 1),
                "eta_s": None if math.isnan(eta) else round(eta, 1), "elapsed_s": round(el, 1)}

    def on_train_begin(self, logs=None):
        self._t0 = time.perf_counter()
        self._emit(force=True)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        per_me = self.cfg.steps_per_mini_epoch * self.cfg.batch_size
        self.done = self.done0 + self._epoch * per_me + (batch + 1) * self.cfg.batch_size
        self._emit()

    def on_epoch_end(self, epoch, logs=None):
        self._emit(force=True)

    def _emit(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < 1.0:
            return
        self._last = now
        snap = {"state": "running", **self.snapshot()}
        write_status(self.run_dir, **snap)
        if self.fn is not None:
            self.fn(snap)


class _SignalStop(_keras_callback_base()):
    """On SIGTERM/SIGINT, stop after the current batch; the last complete checkpoint stays."""

    def __init__(self):
        super().__init__()
        self.stopped = False
        self._old = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handler(self, signum, frame):
        self.stopped = True
        if self.model is not None:
            self.model.stop_training = True

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
