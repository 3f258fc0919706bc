"""Keras objects that saved runs name in their model config (``ade>NearOneRegularizer``).

Importing this module registers them; ``core.run.loading`` imports it so that every
load can resolve them, whichever layer built the model.
"""
from __future__ import annotations

from typing import Any

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="ade")
class NearOneRegularizer(keras.regularizers.Regularizer):
    """Activity regulariser pulling SE gates towards 1: ``weight * mean((1 - gate)**2)``."""

    def __init__(self, weight: float = 0.01):
        self.weight = float(weight)

    def __call__(self, x):
        return self.weight * ops.mean(ops.square(1.0 - x))

    def get_config(self) -> dict[str, Any]:
        return {"weight": self.weight}
