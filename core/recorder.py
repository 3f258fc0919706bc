"""RunRecorder: a Keras callback that writes a run directory every N training images."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import keras
import numpy as np
import tensorflow as tf

from core.atomic import atomic_save_npz
from core.runs import (CHECKPOINT_DIR, MANIFEST, RESUME_DIR, Run, RunWriter, make_manifest,
                       model_weights)


def is_chief() -> bool:
    """True in the one process (and replica context) that should write files.

    Under MultiWorkerMirroredStrategy only the chief (or worker 0 when there is
    no chief) writes; MirroredStrategy has one process, which writes.
    """
    if not tf.distribute.has_strategy():
        return True
    strategy = tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def optimizer_state(optimizer) -> dict[str, np.ndarray]:
    """Optimizer variables in order, keyed ``000012:<path>`` so the order survives the round trip."""
    return {f"{i:06d}:{v.path}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}


def restore_optimizer_state(optimizer, model, state: Mapping[str, np.ndarray]) -> None:
    """Build the optimizer for ``model`` and assign the saved variables by position (checked by shape)."""
    optimizer.build(model.trainable_variables)
    items = [state[k] for k in sorted(state)]
    if len(items) != len(optimizer.variables):
        raise ValueError(f"optimizer state has {len(items)} variables, the optimizer {len(optimizer.variables)}")
    for v, a in zip(optimizer.variables, items):
        if tuple(v.shape) != tuple(a.shape):
            raise ValueError(f"optimizer variable {v.path}: shape {a.shape} != {tuple(v.shape)}")
        v.assign(a)


class RunRecorder(keras.callbacks.Callback):
    """Writes a checkpoint and a history row every ``mini_epoch_images`` training images.

    Works with any Keras model trained by ``model.fit``. Images are counted from
    the batch index (so ``steps_per_execution > 1`` is fine) times
    ``batch_size`` (the global batch size under ``tf.distribute``). Per
    mini-epoch loss/accuracy are the means over that mini-epoch's batches,
    recovered from Keras's running epoch averages.

    Args:
      run_dir: folder of the run (created if absent).
      mini_epoch_images: images between checkpoints.
      batch_size: global batch size used by ``fit``.
      probes: fixed probe set, uint8 images (N, H, W, C) and int labels (N,).
      preprocessing: how the model expects probe images to be preprocessed,
        e.g. ``{"kind": "scale01"}`` (see docs/ARCHITECTURE.md).
      validation_data: optional (x, y) already preprocessed, evaluated at every
        checkpoint for val_loss / val_accuracy (sparse labels).
      training_config / dataset / class_names: stored in the manifest.
      start_mini_epoch / start_images: where a resumed run continues.
      save_optimizer: keep optimizer state beside the newest checkpoint (resume).
      on_checkpoint: called with (mini_epoch, history_row) after each write.
    """

    def __init__(self, run_dir: str | Path, mini_epoch_images: int, batch_size: int, *,
                 probes: tuple[np.ndarray, np.ndarray] | None = None,
                 preprocessing: Mapping[str, Any] | None = None,
                 validation_data: tuple[np.ndarray, np.ndarray] | None = None,
                 training_config: Mapping[str, Any] | None = None,
                 dataset: Mapping[str, Any] | None = None,
                 class_names: list[str] | None = None,
                 start_mini_epoch: int = 0, start_images: int = 0, start_wall_time: float = 0.0,
                 save_optimizer: bool = False,
                 on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None):
        super().__init__()
        if mini_epoch_images < 1 or batch_size < 1:
            raise ValueError("mini_epoch_images and batch_size must be positive")
        self.run_dir = Path(run_dir)
        self.mini_epoch_images = int(mini_epoch_images)
        self.batch_size = int(batch_size)
        self.probes = probes
        self.preprocessing = dict(preprocessing or {"kind": "none"})
        self.validation_data = validation_data
        self.training_config = dict(training_config or {})
        self.dataset = dict(dataset or {})
        self.class_names = list(class_names or [])
        self.save_optimizer = save_optimizer
        self.on_checkpoint = on_checkpoint
        self.mini_epoch = int(start_mini_epoch)
        self.images_seen = int(start_images)
        self._wall0 = float(start_wall_time)
        self._writer = RunWriter(self.run_dir)
        self._steps_per_epoch: int | None = None
        self._epoch = 0
        self._seg = _Segment()

    # -- Keras hooks -------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._t0 = time.perf_counter()
        self._steps_per_epoch = self.params.get("steps") if self.params else None
        if not is_chief():
            return
        if not (self.run_dir / MANIFEST).exists():
            self._create_run()
        if not any((self.run_dir / CHECKPOINT_DIR).glob("ckpt_*.npz")):
            self._writer.write_checkpoint(0, model_weights(self.model))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._seg.new_epoch()

    def on_train_batch_end(self, batch, logs=None):
        # With steps_per_execution=k this fires every k-th batch: use the index, not a call count.
        done_in_epoch = batch + 1
        new_images = (done_in_epoch - self._seg.batches_in_epoch) * self.batch_size
        self._seg.update(done_in_epoch, logs or {})
        self.images_seen += new_images
        self._seg.images += new_images
        if self._seg.images >= self.mini_epoch_images:
            carry = self._seg.images - self.mini_epoch_images  # batch not dividing the mini-epoch
            self._finish_mini_epoch()
            self._seg.images = carry

    # -- writing ---------------------------------------------------------------
    def _create_run(self) -> None:
        shape = tuple(int(s) for s in self.model.inputs[0].shape[1:])
        if len(shape) != 3:
            raise ValueError(f"the recorder needs an image model with input (H, W, C), got {shape}")
        manifest = make_manifest(self.run_dir.name, shape, preprocessing=self.preprocessing,
                                 class_names=self.class_names, mini_epoch_images=self.mini_epoch_images,
                                 training=self.training_config, dataset=self.dataset)
        self._writer.create(manifest, model=self.model, probes=self.probes, overwrite=True)

    def _finish_mini_epoch(self) -> None:
        self.mini_epoch += 1
        row = {"mini_epoch": self.mini_epoch, "images_seen": self.images_seen,
               "wall_time": self._wall0 + time.perf_counter() - self._t0,
               "loss": self._seg.mean("loss"), "accuracy": self._seg.mean_acc(),
               "val_loss": math.nan, "val_accuracy": math.nan, "lr": self._lr()}
        self._seg.reset_segment()
        if not is_chief():
            return
        if self.validation_data is not None:
            row["val_loss"], row["val_accuracy"] = evaluate(self.model, *self.validation_data)
        # Order matters for crash safety: checkpoint, optimizer state, then the history row
        # that marks the checkpoint complete.
        self._writer.write_checkpoint(self.mini_epoch, model_weights(self.model))
        if self.save_optimizer and self.model.optimizer is not None:
            atomic_save_npz(self.run_dir / RESUME_DIR / f"opt_{self.mini_epoch:06d}.npz",
                            optimizer_state(self.model.optimizer))
        self._writer.append_history(row)
        if self.save_optimizer:
            for old in (self.run_dir / RESUME_DIR).glob("opt_*.npz"):
                if old.name != f"opt_{self.mini_epoch:06d}.npz":
                    old.unlink(missing_ok=True)
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.mini_epoch, row)

    def _lr(self) -> float:
        opt = getattr(self.model, "optimizer", None)
        if opt is None:
            return math.nan
        try:
            return float(keras.ops.convert_to_numpy(opt.learning_rate))
        except Exception:  # a schedule object or custom optimizer: not worth failing training for
            return math.nan


class _Segment:
    """Turns Keras's running epoch means into means over one mini-epoch's batches.

    Keras reports, after batch b of an epoch, the mean over batches 1..b of that
    epoch; mean * b is the running sum, and differences of running sums give a
    mean over any span of batches, also across epoch boundaries.
    """

    def __init__(self) -> None:
        self.batches_in_epoch = 0
        self.images = 0
        self._base_sum: dict[str, float] = {}
        self._base_count = 0
        self._last: dict[str, float] = {}
        self._seg_sum: dict[str, float] = {}
        self._seg_count = 0

    def new_epoch(self) -> None:
        for k in set(self._base_sum) | set(self._last):
            self._base_sum[k] = self._total(k)
        self._base_count += self.batches_in_epoch
        self._last, self.batches_in_epoch = {}, 0

    def update(self, done_in_epoch: int, logs: Mapping[str, Any]) -> None:
        self.batches_in_epoch = done_in_epoch
        for k, v in logs.items():
            try:
                self._last[k] = float(v)
            except (TypeError, ValueError):
                pass

    def _total(self, k: str) -> float:
        return self._base_sum.get(k, 0.0) + self._last.get(k, 0.0) * self.batches_in_epoch

    @property
    def _count(self) -> int:
        return self._base_count + self.batches_in_epoch

    def mean(self, k: str) -> float:
        n = self._count - self._seg_count
        if n <= 0 or (k not in self._last and k not in self._base_sum):
            return math.nan
        return (self._total(k) - self._seg_sum.get(k, 0.0)) / n

    def mean_acc(self) -> float:
        for k in ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy"):
            v = self.mean(k)
            if not math.isnan(v):
                return v
        return math.nan

    def reset_segment(self) -> None:
        self._seg_sum = {k: self._total(k) for k in set(self._base_sum) | set(self._last)}
        self._seg_count = self._count
        self.images = 0


def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> tuple[float, float]:
    """Sparse cross-entropy and top-1 accuracy of ``model`` on preprocessed (x, y) in inference mode."""
    losses, correct = [], 0
    for i in range(0, len(x), batch_size):
        p = np.asarray(model(x[i:i + batch_size], training=False), np.float64)
        t = np.asarray(y[i:i + batch_size]).astype(np.int64).reshape(-1)
        losses.append(-np.log(np.clip(p[np.arange(len(t)), t], 1e-12, 1.0)))
        correct += int((p.argmax(axis=1) == t).sum())
    return float(np.concatenate(losses).mean()), correct / max(1, len(x))
