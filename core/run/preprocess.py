"""Input preprocessing specs (the manifest's ``input.preprocessing``) applied in numpy or TensorFlow."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

VALID_KINDS: tuple[str, ...] = ("none", "scale01", "scale_pm1", "meanstd")


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model expects its uint8 input to be turned into floats.

    kind: ``none`` (float of the uint8 values), ``scale01`` (x/255), ``scale_pm1`` (x/127.5 - 1),
    ``meanstd`` ((x - mean) / std, per channel, ``mean``/``std`` in 0..255 units; one value
    broadcasts to every channel).
    """

    kind: str = "scale01"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in VALID_KINDS:
            raise ValueError(
                f"Unknown preprocessing kind {self.kind!r}; valid kinds: {', '.join(VALID_KINDS)}"
            )
        # Normalise lists from JSON into tuples so specs stay hashable (cache keys).
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.kind == "meanstd":
            if not self.mean or not self.std:
                raise ValueError("preprocessing kind 'meanstd' needs non-empty 'mean' and 'std' lists")
            if len(self.mean) != len(self.std):
                raise ValueError(
                    f"'mean' and 'std' must have the same length, got {len(self.mean)} and {len(self.std)}"
                )
            if any(not np.isfinite(s) or s <= 0 for s in self.std):
                raise ValueError(f"every 'std' value must be a positive number, got {list(self.std)}")
            if any(not np.isfinite(m) for m in self.mean):
                raise ValueError(f"every 'mean' value must be finite, got {list(self.mean)}")
        elif self.mean or self.std:
            raise ValueError(f"'mean'/'std' only apply to kind 'meanstd', not {self.kind!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "PreprocessSpec":
        """Parse the manifest form ``{"kind": "scale01"}`` / ``{"kind": "meanstd", "mean": [...], "std": [...]}``."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping) or "kind" not in d:
            raise ValueError(
                f"preprocessing must be a mapping with a 'kind' key (one of {', '.join(VALID_KINDS)}), got {d!r}"
            )
        unknown = set(d) - {"kind", "mean", "std"}
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; allowed: kind, mean, std")
        return cls(kind=str(d["kind"]), mean=tuple(d.get("mean") or ()), std=tuple(d.get("std") or ()))

    def to_dict(self) -> dict[str, Any]:
        """The manifest form; ``mean``/``std`` appear only for ``meanstd``."""
        if self.kind == "meanstd":
            return {"kind": self.kind, "mean": list(self.mean), "std": list(self.std)}
        return {"kind": self.kind}


def _mean_std(spec: PreprocessSpec, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std as float32 (C,) arrays; one value broadcasts to every channel."""
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    if mean.size not in (1, channels):
        raise ValueError(
            f"preprocessing mean/std have {mean.size} values but the images have {channels} channels"
        )
    return np.broadcast_to(mean, (channels,)), np.broadcast_to(std, (channels,))


def apply_preprocessing(x: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (N,H,W,C) (or any shape ending in C) -> float32 of the same shape, as the model expects."""
    xf = np.asarray(x).astype(np.float32)
    if spec.kind == "none":
        return xf
    if spec.kind == "scale01":
        return xf / np.float32(255.0)
    if spec.kind == "scale_pm1":
        return xf / np.float32(127.5) - np.float32(1.0)
    mean, std = _mean_std(spec, xf.shape[-1])
    return (xf - mean) / std


def tf_preprocess(x: Any, spec: PreprocessSpec) -> Any:
    """TensorFlow twin of :func:`apply_preprocessing`: tensor (..., C) in 0..255 units -> float32 tensor."""
    import tensorflow as tf  # local: keeps core.run.preprocess importable without TensorFlow

    xf = tf.cast(x, tf.float32)
    if spec.kind == "none":
        return xf
    if spec.kind == "scale01":
        return xf / 255.0
    if spec.kind == "scale_pm1":
        return xf / 127.5 - 1.0
    channels = xf.shape[-1]
    if channels is None:
        raise ValueError("tf_preprocess with 'meanstd' needs a known channel dimension")
    mean, std = _mean_std(spec, int(channels))
    return (xf - tf.constant(mean)) / tf.constant(std)
