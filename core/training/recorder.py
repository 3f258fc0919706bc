"""RunRecorder: a Keras callback that writes a run directory every N training images."""
from __future__ import annotations

import math
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import keras
import numpy as np
import tensorflow as tf

from core.run.atomic import atomic_save_npz
from core.run.remote import publisher_for
from core.run.runs import (MANIFEST, RESUME_DIR, Run, RunError, RunWriter, make_manifest,
                       model_weights)
from core.training.distribute import is_chief, is_multi_worker
from core.training.segments import Segment, evaluate, loss_count_variable


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

    Works with any Keras model trained by ``model.fit``. Images are counted
    exactly from the loss tracker's sample count (a short last batch of a
    numpy epoch counts what it holds); under multi-worker strategies, where
    reading it would be a collective, from the batch index times
    ``batch_size`` (the global batch size). Batch callbacks fire every k-th
    batch with ``steps_per_execution=k``, so a checkpoint lands on the first
    callback at or after each multiple of ``mini_epoch_images`` and
    ``images_seen`` records the images really seen then; boundaries do not
    drift. Per mini-epoch loss/accuracy are per-image means over exactly the
    images between two checkpoints, recovered from Keras's running epoch
    means.

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
      start_mini_epoch / start_images / start_wall_time: where a resumed run continues.
      resume: continue an existing run after its last complete checkpoint
        (overrides the ``start_*`` arguments). Without it, recording into a
        run that already has checkpoints after 0 is refused rather than
        overwriting them.
      save_optimizer: keep optimizer state beside the newest checkpoint (resume).
      tensorboard_dir: also write the history row and per-variable weight
        norms as TensorBoard scalars there, step = mini-epoch.
      on_checkpoint: called with (mini_epoch, history_row) once that checkpoint's files
        are written, from the background writer thread.

    Checkpoint files are written by one background thread, in order, while
    training continues; ``fit`` returns only after the last write (``flush``).
    A process killed mid-write leaves the last complete checkpoint intact.
    """

    def __init__(self, run_dir: str | Path, mini_epoch_images: int, batch_size: int, *,
                 probes: tuple[np.ndarray, np.ndarray] | None = None,
                 preprocessing: Mapping[str, Any] | None = None,
                 validation_data: tuple[np.ndarray, np.ndarray] | None = None,
                 training_config: Mapping[str, Any] | None = None,
                 dataset: Mapping[str, Any] | None = None,
                 class_names: list[str] | None = None,
                 start_mini_epoch: int = 0, start_images: int = 0, start_wall_time: float = 0.0,
                 resume: bool = False,
                 save_optimizer: bool = False,
                 tensorboard_dir: str | Path | None = None,
                 on_checkpoint: Callable[[int, dict[str, Any]], None] | None = None):
        super().__init__()
        if mini_epoch_images < 1 or batch_size < 1:
            raise ValueError("mini_epoch_images and batch_size must be positive")
        # a URL: the run is staged locally and each finished file uploaded (core.run.remote.Publisher)
        self._publisher = publisher_for(run_dir)
        self.run_dir = self._publisher.local if self._publisher is not None else Path(run_dir)
        self.mini_epoch_images = int(mini_epoch_images)
        self.batch_size = int(batch_size)
        self.probes = probes
        self.preprocessing = dict(preprocessing or {"kind": "none"})
        self.validation_data = validation_data
        self.training_config = dict(training_config or {})
        self.dataset = dict(dataset or {})
        self.class_names = list(class_names or [])
        self.resume = resume
        self.save_optimizer = save_optimizer
        self.tensorboard_dir = None if tensorboard_dir is None else str(tensorboard_dir)
        self.on_checkpoint = on_checkpoint
        self.mini_epoch = int(start_mini_epoch)
        self.images_seen = int(start_images)
        self._wall0 = float(start_wall_time)
        self._writer = RunWriter(self.run_dir)
        self._seg = Segment()
        self._since_boundary = 0  # images since the last nominal boundary (a multiple of mini_epoch_images)
        self._chief = True
        self._multi_worker = False
        self._single_replica = True
        self._count_var = None
        self._tb_writer = None
        self._key_map: dict[str, str] = {}
        self._started = False
        self._pending: threading.Thread | None = None
        self._error: BaseException | None = None
        self._t0 = time.perf_counter()

    # -- Keras hooks -------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._t0 = time.perf_counter()
        strategy = getattr(self.model, "distribute_strategy", None)
        self._chief = is_chief(strategy)
        self._multi_worker = is_multi_worker(strategy)
        # Keras's compiled predict misbehaves on several replicas (MirroredStrategy returned
        # twice the rows) and waits for the other workers on a cluster: eager calls there.
        self._single_replica = getattr(strategy, "num_replicas_in_sync", 1) == 1 and not self._multi_worker
        self._count_var = None if self._multi_worker else loss_count_variable(self.model)
        self._warn_coarse_callbacks()
        first_fit, self._started = not self._started, True
        if not self._chief:
            return
        if first_fit:
            if self._publisher is not None:
                self._publisher.pull()
            if self.resume:
                self._continue_existing_run()
            elif self.mini_epoch == 0:
                self._refuse_overwrite()
        fresh = first_fit and self.mini_epoch == 0
        if fresh or not (self.run_dir / MANIFEST).exists():
            # A fresh start rewrites manifest, architecture and checkpoint 0: leftovers of an
            # earlier model in this folder must not pose as this run's beginning.
            self._create_run()
        self._key_map = _reloaded_paths(self.model, Run(self.run_dir))
        if fresh:
            self._writer.write_checkpoint(0, self._weights())
        self._publish()

    def on_train_end(self, logs=None):
        # Wall time counts time inside fit: a pause between two fit calls is not training.
        self._wall0 += time.perf_counter() - self._t0
        self.flush()
        if self._tb_writer is not None:
            self._tb_writer.flush()

    def on_epoch_begin(self, epoch, logs=None):
        self._seg.new_epoch()

    def on_train_batch_end(self, batch, logs=None):
        done_in_epoch = self._epoch_images(batch)
        new_images = max(0, done_in_epoch - self._seg.epoch_images)
        self._seg.update(done_in_epoch, logs or {})
        self.images_seen += new_images
        self._since_boundary += new_images
        if self._since_boundary >= self.mini_epoch_images:
            self._since_boundary -= self.mini_epoch_images  # keep boundaries at multiples: no drift
            self._finish_mini_epoch()

    def on_epoch_end(self, epoch, logs=None):
        exact = self._exact_epoch_images()
        if exact is not None and exact != self._seg.epoch_images:
            # The index over-counted a short last batch: take those images back before they count.
            delta = self._seg.epoch_images - exact
            self.images_seen -= delta
            self._since_boundary -= delta
            self._seg.epoch_images = exact

    # -- counting ---------------------------------------------------------------
    def _epoch_images(self, batch: int) -> int:
        # With steps_per_execution=k this fires every k-th batch: use the index, not a call count.
        est = (batch + 1) * self.batch_size
        # The index over-counts only a short last batch (Keras also reports a short last
        # execution by its nominal end), so the exact count, a device read, is
        # needed only where a checkpoint may be due, and at the epoch end.
        if self._count_var is not None and \
                self._since_boundary + est - self._seg.epoch_images >= self.mini_epoch_images:
            exact = self._exact_epoch_images()
            if exact is not None:
                return exact
        return est

    def _exact_epoch_images(self) -> int | None:
        if self._count_var is None:
            return None
        try:
            return int(round(float(keras.ops.convert_to_numpy(self._count_var))))
        except Exception:  # an exotic metric variable: fall back to the batch index for good
            self._count_var = None
            return None

    def _warn_coarse_callbacks(self) -> None:
        spe = getattr(self.model, "steps_per_execution", 1) or 1
        try:
            spe = int(spe)
        except (TypeError, ValueError):
            return
        if spe * self.batch_size > self.mini_epoch_images:
            print(f"RunRecorder: batch callbacks come every {spe * self.batch_size} images "
                  f"(steps_per_execution={spe}), more than a mini-epoch ({self.mini_epoch_images}); "
                  "some mini-epochs will be merged", file=sys.stderr)

    # -- writing ---------------------------------------------------------------
    def _continue_existing_run(self) -> None:
        if not (self.run_dir / MANIFEST).exists():
            return
        run = Run(self.run_dir)
        done = run.complete_mini_epochs()
        start = done[-1] if done else 0
        self._writer.truncate_after(start)
        self.mini_epoch, self.images_seen, self._wall0 = start, 0, 0.0
        if start > 0:
            hist = run.history()
            last = hist[hist["mini_epoch"] == start].iloc[0]
            self.images_seen, self._wall0 = int(last["images_seen"]), float(last["wall_time"])

    def _refuse_overwrite(self) -> None:
        if not (self.run_dir / MANIFEST).exists():
            return
        later = [c.mini_epoch for c in Run(self.run_dir).checkpoints() if c.mini_epoch > 0]
        if later:
            raise RunError(self.run_dir, f"this run already has checkpoints up to mini-epoch {max(later)}; "
                                         "record into a new folder or pass resume=True to continue it")

    def _create_run(self) -> None:
        from core.run.custom_objects import object_modules

        manifest = make_manifest(self.run_dir.name, self._input_shape(), preprocessing=self.preprocessing,
                                 class_names=self.class_names, mini_epoch_images=self.mini_epoch_images,
                                 training=self.training_config, dataset=self.dataset)
        # what a reader needs besides Keras: names, and the module to import where there is one
        manifest["custom_objects"] = object_modules(self.model)
        self._writer.create(manifest, model=self.model, probes=self.probes, overwrite=True)

    def _input_shape(self) -> tuple[int, ...]:
        try:
            shape = tuple(int(s) for s in self.model.inputs[0].shape[1:])
        except (AttributeError, IndexError, TypeError, ValueError):
            shape = tuple(self.probes[0].shape[1:]) if self.probes is not None else ()
        if len(shape) != 3:
            raise ValueError(f"the recorder needs an image model with input (H, W, C), got {shape or 'unknown'}: "
                             "give the model a keras.Input or pass probes")
        return shape

    def _finish_mini_epoch(self) -> None:
        self.mini_epoch += 1
        row = {"mini_epoch": self.mini_epoch, "images_seen": self.images_seen,
               "wall_time": self._wall0 + time.perf_counter() - self._t0,
               "loss": self._seg.mean("loss"), "accuracy": self._seg.mean_acc(),
               "val_loss": math.nan, "val_accuracy": math.nan, "lr": self._lr()}
        self._seg.reset_segment()
        if not self._chief:
            return
        if self.validation_data is not None:
            row["val_loss"], row["val_accuracy"] = evaluate(self.model, *self.validation_data,
                                                            compiled=self._single_replica)
        # Snapshot on the training thread (the next batch changes the variables); the files are
        # written by a background thread while training goes on.
        weights = self._weights()
        opt = None
        if self.save_optimizer and self.model.optimizer is not None:
            opt = optimizer_state(self.model.optimizer)
        self.flush()  # one write in flight at a time keeps the order of checkpoints
        self._pending = threading.Thread(target=self._write_checkpoint, args=(self.mini_epoch, weights, opt, row),
                                         name=f"RunRecorder-{self.mini_epoch}")
        self._pending.start()

    def flush(self) -> None:
        """Wait for the checkpoint being written; re-raise a failure of that write here."""
        if self._pending is not None:
            self._pending.join()
            self._pending = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _write_checkpoint(self, mini_epoch: int, weights: dict[str, np.ndarray],
                          opt: dict[str, np.ndarray] | None, row: dict[str, Any]) -> None:
        try:
            # Order matters for crash safety: checkpoint, optimizer state, then the history row
            # that marks the checkpoint complete; old optimizer state goes only after that.
            self._writer.write_checkpoint(mini_epoch, weights)
            if opt is not None:
                atomic_save_npz(self.run_dir / RESUME_DIR / f"opt_{mini_epoch:06d}.npz", opt)
            self._writer.append_history(row)
            if opt is not None:
                for old in (self.run_dir / RESUME_DIR).glob("opt_*.npz"):
                    if old.name != f"opt_{mini_epoch:06d}.npz":
                        old.unlink(missing_ok=True)
            self._publish()
            if self.tensorboard_dir is not None:
                self._write_tensorboard(row, weights)
            if self.on_checkpoint is not None:
                self.on_checkpoint(mini_epoch, row)
        except BaseException as e:  # handed to the training thread by flush()
            self._error = e

    def _publish(self) -> None:
        if self._publisher is not None:
            self._publisher.push()

    def _weights(self) -> dict[str, np.ndarray]:
        w = model_weights(self.model)
        return {self._key_map.get(k, k): a for k, a in w.items()} if self._key_map else w

    def _write_tensorboard(self, row: Mapping[str, Any], weights: Mapping[str, np.ndarray]) -> None:
        from core.training.tensorboard import write_scalar

        if self._tb_writer is None:
            self._tb_writer = tf.summary.create_file_writer(self.tensorboard_dir)
        step = int(row["mini_epoch"])
        with self._tb_writer.as_default():
            for k in ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "images_seen"):
                v = float(row.get(k, math.nan))
                if math.isfinite(v):
                    write_scalar(f"train/{k}", v, step)
            trainable = {self._key_map.get(v.path, v.path) for v in self.model.trainable_weights}
            for path, arr in weights.items():
                if path in trainable:
                    write_scalar(f"weight_norm/{path}", float(np.linalg.norm(arr.astype(np.float64))), step)
        self._tb_writer.flush()

    def _lr(self) -> float:
        opt = getattr(self.model, "optimizer", None)
        if opt is None:
            return math.nan
        try:
            return float(keras.ops.convert_to_numpy(opt.learning_rate))
        except Exception:  # a schedule object or custom optimizer: not worth failing training for
            return math.nan


def _reloaded_paths(model, run: Run) -> dict[str, str]:
    """Map ``model``'s variable paths to those of the run's saved architecture when reloaded.

    Paths depend on how a model was built: a ``Sequential`` built in this
    process names its kernels ``sequential_3/conv2d_7/kernel``, the same model
    loaded from ``model.keras`` ``conv2d_7/kernel``. Checkpoints must match
    the saved architecture, which is what every reader loads. Variables
    correspond by position (same architecture); if the file cannot be loaded
    or the shapes disagree, the model's own paths are kept.
    """
    from core.run.loading import load_model_file

    try:
        loaded = load_model_file(run.architecture_path)
    except Exception as e:  # e.g. an unregistered custom layer: checkpoints still work for this model
        print(f"RunRecorder: cannot reload {run.architecture_path} ({type(e).__name__}: {e}); checkpoints "
              "use this model's variable paths", file=sys.stderr)
        return {}
    ours, theirs = list(model.weights), list(loaded.weights)
    if len(ours) != len(theirs) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(ours, theirs)):
        print(f"RunRecorder: {run.architecture_path} does not match the model being trained; checkpoints "
              "use this model's variable paths", file=sys.stderr)
        return {}
    return {a.path: b.path for a, b in zip(ours, theirs) if a.path != b.path}
