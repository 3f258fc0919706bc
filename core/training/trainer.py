"""Mini-epoch trainer for the built-in network: writes a run directory as it trains."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from core.run.atomic import atomic_write_json
from core.training.models import ArchConfig
from core.run.runs import RESUME_DIR, Run, RunError, RunWriter
from core.training.resume import (  # noqa: F401 - SIDE_FILES and STATUS are imported from here too
    SIDE_FILES, STATUS, TRAIN_CONFIG, ResumePoint, _check_options_fit, _check_resumable, _clear_run_files,
    _has_run_files, _manifest_config, _record_plan, _remove_temp_files, _started_here, resume_point,
)

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
    from core.training import data

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
    # Probes are held out like validation images (they used to be a copy of the first val images).
    xp = _load_images([paths[i] for i in probe_idx], size, cfg.arch.input_channels)
    y = np.asarray(labels, np.int64)
    desc = {"kind": "folder", "root": str(Path(cfg.dataset).resolve()), "images": len(paths),
            "classes": len(names)}
    return TrainData([paths[i] for i in train_idx], y[train_idx], xv, y[val_idx], xp, y[probe_idx],
                     names, desc)


def _load_images(paths: list[str], size: int, channels: int) -> np.ndarray:
    from core.run.images import load_probe_image

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
CheckpointFn = Callable[[int, dict[str, Any]], None]
def train(cfg: TrainConfig, run_dir: str | Path, *, resume: bool = False, progress: ProgressFn | None = None,
          strategy=None, handle_signals: bool = False, callbacks: Sequence[Any] = (),
          on_checkpoint: CheckpointFn | None = None, tensorboard_dir: str | Path | None = None) -> Run:
    """Train the built-in network, writing checkpoint ``k`` after mini-epoch ``k``.

    With ``resume`` the run continues after its last complete checkpoint (one
    with a history row): later files are discarded, weights and optimizer
    state are restored, and training runs up to ``cfg.mini_epochs`` in total
    (every other option comes from the run's manifest). A run killed before
    its first complete checkpoint starts again from scratch with ``cfg``.
    ``progress`` receives status dicts (images done, rate, ETA) about once a
    second; ``strategy`` is an optional ``tf.distribute`` strategy;
    ``callbacks`` are extra Keras callbacks; ``on_checkpoint(mini_epoch, row)``
    follows every checkpoint. With ``handle_signals`` SIGTERM/SIGINT stop
    training after the current batch (state ``cancelled``; the last complete
    checkpoint stays). ``tensorboard_dir``: also log each mini-epoch there (``RunRecorder``).
    """
    run_dir = Path(run_dir)
    stop = _StopFlag() if handle_signals else None
    try:
        return _train(cfg, run_dir, resume, progress, strategy, stop, tuple(callbacks), on_checkpoint,
                      tensorboard_dir)
    finally:
        if stop is not None:
            stop.restore()


def _train(cfg: TrainConfig, run_dir: Path, resume: bool, progress: ProgressFn | None, strategy,
           stop: "_StopFlag | None", extra_callbacks: tuple[Any, ...], on_checkpoint: CheckpointFn | None,
           tensorboard_dir: str | Path | None = None) -> Run:
    from core.training import data as data_mod
    from core.training.models import build_seed_net
    from core.run.preprocess import PreprocessSpec, apply_preprocessing
    from core.training.distribute import is_chief
    from core.training.recorder import RunRecorder, restore_optimizer_state
    from core.run.runs import assign_weights, read_npz_weights

    chief = is_chief(strategy)
    own = _check_resumable(run_dir) if resume else None
    point = resume_point(Run(run_dir)) if resume else None
    if point is not None:
        cfg = dataclasses.replace(own, mini_epochs=cfg.mini_epochs) if own is not None else cfg
        if own is None:
            _check_options_fit(cfg, Run(run_dir), point.mini_epoch)
        if chief:
            RunWriter(run_dir).truncate_after(point.mini_epoch)
            _remove_temp_files(run_dir)
            _record_plan(run_dir, cfg)
    elif resume:
        if not _started_here(run_dir):
            raise RunError(run_dir, "nothing to resume: no run was started in this folder")
        cfg = _manifest_config(run_dir, cfg.mini_epochs) or cfg
        if chief:
            _clear_run_files(run_dir)  # killed before its first checkpoint: nothing worth keeping
    elif _has_run_files(run_dir):
        raise RunError(run_dir, "a run with this name already exists; choose another name or use --resume")
    start = point or ResumePoint(0, 0, 0.0)

    remaining = cfg.mini_epochs - start.mini_epoch
    if remaining <= 0:
        if chief:
            write_status(run_dir, state="done", **_Progress.static_snapshot(cfg, start.mini_epoch))
        return Run(run_dir)
    if chief:
        write_status(run_dir, state="starting", **_Progress.static_snapshot(cfg, start.mini_epoch))
        # A second copy of the options, for ``python -m core repair`` when the manifest is damaged.
        atomic_write_json(run_dir / RESUME_DIR / TRAIN_CONFIG, cfg.to_dict())
    data = load_data(cfg)
    scope = strategy.scope() if strategy is not None else _nullcontext()
    total_steps = cfg.steps_per_mini_epoch * cfg.mini_epochs
    with scope:
        model = build_seed_net(cfg.arch, seed=cfg.seed)
        opt = make_optimizer(cfg, total_steps)
        model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=[_accuracy_metric()])
        if point is not None:
            assign_weights(model, read_npz_weights(Run(run_dir).checkpoint(start.mini_epoch).path))
            opt_file = run_dir / RESUME_DIR / f"opt_{start.mini_epoch:06d}.npz"
            if opt_file.exists():
                with np.load(opt_file, allow_pickle=False) as z:
                    restore_optimizer_state(opt, model, {k: z[k] for k in z.files})
            elif start.mini_epoch > 0:
                print(f"warning: no optimizer state for mini-epoch {start.mini_epoch} ({opt_file}); "
                      "the optimizer starts afresh", file=sys.stderr)
        if not opt.built:  # its variables made now, not inside the first step (see _accuracy_metric)
            opt.build(model.trainable_variables)
    spec = {"kind": cfg.preprocessing}
    # A new shuffle seed per resume point: the resumed stream is not the uninterrupted one, but
    # it is reproducible for the same resume point.
    ds = data_mod.make_dataset(data.x_train, data.y_train, batch_size=cfg.batch_size,
                               image_size=cfg.arch.input_size, preprocessing=spec, augment=cfg.augment,
                               shuffle=True, seed=cfg.seed + start.mini_epoch, repeat=True)
    pspec = PreprocessSpec.from_dict(spec)
    val = (apply_preprocessing(data.x_val, pspec), data.y_val) if len(data.x_val) else None
    # A mini-epoch is a whole number of batches, so checkpoints fall on Keras epoch ends.
    recorder = RunRecorder(run_dir, cfg.steps_per_mini_epoch * cfg.batch_size, cfg.batch_size,
                           probes=(data.x_probe, data.y_probe), preprocessing=spec, validation_data=val,
                           training_config=cfg.to_dict(), dataset=data.description,
                           class_names=data.class_names, start_mini_epoch=start.mini_epoch,
                           start_images=start.images_seen, start_wall_time=start.wall_time,
                           save_optimizer=True, on_checkpoint=on_checkpoint, tensorboard_dir=tensorboard_dir)
    watcher = _Progress(run_dir, cfg, start.mini_epoch, progress, write=chief, stop=stop)
    cbs = [recorder, watcher, *extra_callbacks] + ([_StopCallback(stop)] if stop is not None else [])
    if stop is not None and stop.stopped:
        state = "cancelled"  # asked to stop while loading data: do not start
    else:
        try:
            model.fit(ds, steps_per_epoch=cfg.steps_per_mini_epoch, epochs=remaining, callbacks=cbs,
                      verbose=0, shuffle=False)
        except BaseException as e:
            if chief:
                write_status(run_dir, state="failed", error=f"{type(e).__name__}: {e}", **watcher.snapshot())
            raise
        state = "cancelled" if stop is not None and stop.stopped else "done"
    if chief:
        write_status(run_dir, state=state, **watcher.snapshot())
    return Run(run_dir)


def _accuracy_metric():
    """The "accuracy" metric, built now: the string form creates its variables inside the first
    training step, and a step that creates variables is traced twice (seconds per run)."""
    import keras

    return keras.metrics.SparseCategoricalAccuracy(name="accuracy")


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

    def __init__(self, run_dir: Path, cfg: TrainConfig, start_me: int, fn: ProgressFn | None, write: bool = True,
                 stop: "_StopFlag | None" = None):
        super().__init__()
        self.run_dir, self.cfg, self.fn, self.write, self.stop = run_dir, cfg, fn, write, stop
        self.total = cfg.mini_epochs * cfg.steps_per_mini_epoch * cfg.batch_size
        self.done0 = start_me * cfg.steps_per_mini_epoch * cfg.batch_size
        self.done = self.done0
        self._t0 = time.perf_counter()
        self._last = 0.0
        self._epoch = 0

    @staticmethod
    def static_snapshot(cfg: TrainConfig, mini_epoch: int) -> dict[str, Any]:
        """A snapshot before (or without) training: nothing measured yet."""
        per_me = cfg.steps_per_mini_epoch * cfg.batch_size
        return {"images_done": mini_epoch * per_me, "images_total": cfg.mini_epochs * per_me,
                "mini_epoch": mini_epoch, "mini_epochs": cfg.mini_epochs, "images_per_s": 0.0,
                "eta_s": None, "elapsed_s": 0.0}

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
        # A stop is said at once (not up to 1 s late): the page shows where the run really ends.
        self._emit(force=self._stopping)

    def on_epoch_end(self, epoch, logs=None):
        self._emit(force=True)

    @property
    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.stopped

    def _emit(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < 1.0:
            return
        self._last = now
        snap = {"state": "stopping" if self._stopping else "running", **self.snapshot()}
        if self.write:
            write_status(self.run_dir, **snap)
        if self.fn is not None:
            self.fn(snap)


class _StopFlag:
    """Installed for the whole of ``train``: SIGTERM/SIGINT only set a flag (no half-written files)."""

    def __init__(self) -> None:
        self.stopped = False
        self._old = {s: signal.signal(s, self._handler) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handler(self, signum, frame) -> None:
        if self.stopped and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the batch
        self.stopped = True

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class _StopCallback(_keras_callback_base()):
    """Stops ``fit`` after the batch during which a stop was requested."""

    def __init__(self, flag: _StopFlag):
        super().__init__()
        self.flag = flag

    def on_train_begin(self, logs=None):
        # fit resets stop_training just before this hook, so a request made earlier is re-applied.
        if self.flag.stopped:
            self.model.stop_training = True

    def on_train_batch_end(self, batch, logs=None):
        if self.flag.stopped:
            self.model.stop_training = True
