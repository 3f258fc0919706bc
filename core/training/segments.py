"""Per-mini-epoch numbers from Keras's running epoch means, and the validation pass at a checkpoint."""
from __future__ import annotations

import math
from typing import Any, Mapping

import keras
import numpy as np


def loss_count_variable(model):
    """The compiled loss tracker's sample counter (a ``keras.metrics.Mean``), or None."""
    for m in getattr(model, "metrics", None) or []:
        if m.name == "loss" and isinstance(m, keras.metrics.Mean):
            return getattr(m, "count", None)
    return None


class Segment:
    """Turns Keras's running epoch means into per-image means over one mini-epoch.

    After a batch Keras reports, per metric, the mean over the images of the
    epoch so far (the loss tracker weights each batch by its size), so
    mean * images is the running sum; differences of running sums give the
    mean over any span of images, also across epoch boundaries. Sums are kept
    per segment, so a NaN poisons one mini-epoch's row, not all later ones.
    """

    def __init__(self) -> None:
        self.epoch_images = 0
        self._last: dict[str, float] = {}
        self._start_sum: dict[str, float] = {}  # running sums at the segment start, this epoch
        self._start_images = 0
        self._acc_sum: dict[str, float] = {}  # segment sums carried from earlier epochs
        self._acc_images = 0

    def _epoch_sum(self, k: str) -> float:
        return self._last.get(k, 0.0) * self.epoch_images

    def new_epoch(self) -> None:
        if self.epoch_images > self._start_images:  # else the segment holds nothing of this epoch
            for k in self._last:
                self._acc_sum[k] = self._acc_sum.get(k, 0.0) + self._epoch_sum(k) - self._start_sum.get(k, 0.0)
            self._acc_images += self.epoch_images - self._start_images
        self._last, self._start_sum, self._start_images, self.epoch_images = {}, {}, 0, 0

    def update(self, epoch_images: int, logs: Mapping[str, Any]) -> None:
        self.epoch_images = epoch_images
        for k, v in logs.items():
            try:
                self._last[k] = float(v)
            except (TypeError, ValueError):
                pass

    @property
    def images(self) -> int:
        """Images in the current segment."""
        return self._acc_images + self.epoch_images - self._start_images

    def mean(self, k: str) -> float:
        n = self.images
        if n <= 0 or (k not in self._last and k not in self._acc_sum):
            return math.nan
        return (self._acc_sum.get(k, 0.0) + self._epoch_sum(k) - self._start_sum.get(k, 0.0)) / n

    def mean_acc(self) -> float:
        for k in ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy"):
            v = self.mean(k)
            if not math.isnan(v):
                return v
        return math.nan

    def reset_segment(self) -> None:
        self._start_sum = {k: self._epoch_sum(k) for k in self._last}
        self._start_images = self.epoch_images
        self._acc_sum, self._acc_images = {}, 0


def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int = 256, compiled: bool = True
             ) -> tuple[float, float]:
    """Sparse cross-entropy and top-1 accuracy of ``model`` on preprocessed (x, y) in inference mode.

    ``compiled`` uses Keras's cached predict function (about twice as fast as
    eager calls); only for models on a single replica.
    """
    losses, correct = [], 0
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        p = np.asarray(model.predict_on_batch(xb) if compiled else model(xb, training=False), np.float64)
        t = np.asarray(y[i:i + batch_size]).astype(np.int64).reshape(-1)
        losses.append(-np.log(np.clip(p[np.arange(len(t)), t], 1e-12, 1.0)))
        correct += int((p.argmax(axis=1) == t).sum())
    return float(np.concatenate(losses).mean()), correct / max(1, len(x))
