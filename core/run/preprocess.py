"""Input preprocessing specs (the manifest's ``input.preprocessing``) applied in numpy or TensorFlow."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

VALID_KINDS: tuple[str, ...] = ("none", "scale01", "scale_pm1", "meanstd", "imagenet_caffe", "imagenet_torch")
#: ``keras.applications.resnet50.preprocess_input``: RGB -> BGR, minus these per-channel (B, G, R) means.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
#: torchvision's ImageNet statistics in 0..1 units: (x / 255 - mean) / std.
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
#: Where a run's scaling came from: given by the user or the producer, detected in the model, or a guess.
SOURCES = ("given", "detected", "guess")
CLI_HELP = ("none (raw 0-255), scale01 (x/255), scale_pm1 (x/127.5-1), imagenet_caffe (as "
            "keras.applications.resnet50.preprocess_input), imagenet_torch ((x/255-mean)/std, ImageNet "
            "statistics) or mean_std:M1,M2,M3/S1,S2,S3 ((x-M)/S per channel, in 0-255 pixel units)")


@dataclass(frozen=True)
class PreprocessSpec:
    """How a model expects its uint8 input to be turned into floats.

    kind: ``none`` (float of the uint8 values), ``scale01`` (x/255), ``scale_pm1`` (x/127.5 - 1),
    ``meanstd`` ((x - mean) / std, per channel, ``mean``/``std`` in 0..255 units; one value
    broadcasts to every channel), ``imagenet_caffe`` (RGB -> BGR minus the ImageNet means, as
    ``keras.applications.resnet50.preprocess_input``), ``imagenet_torch`` ((x/255 - mean) / std
    with torchvision's ImageNet statistics). ``source``: ``given``, ``detected`` (in the model) or
    ``guess``; ``note`` says what was detected.
    """

    kind: str = "scale01"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    source: str = "given"
    note: str = ""

    @property
    def is_guess(self) -> bool:
        return self.source == "guess"

    def describe(self) -> str:
        """One line for people: the kind, its values, and whether it is a guess or was detected."""
        text = self.kind if self.kind != "meanstd" else (
            f"mean_std:{','.join(f'{v:g}' for v in self.mean)}/{','.join(f'{v:g}' for v in self.std)}")
        if self.is_guess:
            text += " (a guess: the run does not say how its model scales pixels)"
        elif self.source == "detected":
            text += " (detected in the model" + (f": {self.note}" if self.note else "") + ")"
        return text

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
        if self.source not in SOURCES:
            raise ValueError(f"preprocessing source must be one of {', '.join(SOURCES)}, got {self.source!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "PreprocessSpec":
        """Parse the manifest form ``{"kind": "scale01"}`` / ``{"kind": "meanstd", "mean": [...], "std": [...]}``."""
        if d is None:
            return cls()
        if not isinstance(d, Mapping) or "kind" not in d:
            raise ValueError(
                f"preprocessing must be a mapping with a 'kind' key (one of {', '.join(VALID_KINDS)}), got {d!r}"
            )
        unknown = set(d) - {"kind", "mean", "std", "source", "note"}
        if unknown:
            raise ValueError(f"unknown preprocessing keys {sorted(unknown)}; allowed: kind, mean, std, source, note")
        return cls(kind=str(d["kind"]), mean=tuple(d.get("mean") or ()), std=tuple(d.get("std") or ()),
                   source=str(d.get("source") or "given"), note=str(d.get("note") or ""))

    @classmethod
    def parse(cls, text: str, source: str = "given") -> "PreprocessSpec":
        """The command-line form: a kind name or ``mean_std:M1,M2,M3/S1,S2,S3`` (0-255 pixel units).

        Raises ValueError saying what is wrong and which forms are valid.
        """
        text = str(text).strip()
        if text.lower().startswith(("mean_std:", "meanstd:")):
            body = text.split(":", 1)[1]
            if body.count("/") != 1:
                raise ValueError(f"{text!r}: write mean_std:M1,M2,M3/S1,S2,S3 (means, a slash, standard deviations)")
            try:
                mean, std = ([float(v) for v in part.split(",") if v.strip()] for part in body.split("/"))
            except ValueError:
                raise ValueError(f"{text!r}: the means and standard deviations must be numbers") from None
            if len(mean) != len(std) or len(mean) not in (1, 3):
                raise ValueError(f"{text!r}: give 3 means and 3 standard deviations (or 1 and 1 for every "
                                 f"channel); got {len(mean)} and {len(std)}")
            return cls("meanstd", tuple(mean), tuple(std), source=source)
        if text not in VALID_KINDS or text == "meanstd":
            raise ValueError(f"unknown pixel scaling {text!r}; valid: {CLI_HELP}")
        return cls(text, source=source)

    def to_dict(self) -> dict[str, Any]:
        """The manifest form; ``mean``/``std`` appear only for ``meanstd``, ``source``/``note`` when not plain given."""
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == "meanstd":
            d.update(mean=list(self.mean), std=list(self.std))
        if self.source != "given":
            d["source"] = self.source
        if self.note:
            d["note"] = self.note
        return d


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
    if spec.kind == "imagenet_caffe":
        return _caffe(xf)
    if spec.kind == "imagenet_torch":
        return (xf / np.float32(255.0) - np.asarray(TORCH_MEAN, np.float32)) / np.asarray(TORCH_STD, np.float32)
    mean, std = _mean_std(spec, xf.shape[-1])
    return (xf - mean) / std


def _caffe(xf: np.ndarray) -> np.ndarray:
    if xf.shape[-1] != 3:
        raise ValueError(f"imagenet_caffe needs 3-channel (RGB) images, got {xf.shape[-1]} channel(s)")
    return xf[..., ::-1] - np.asarray(CAFFE_MEAN_BGR, np.float32)


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
    if spec.kind == "imagenet_caffe":
        return xf[..., ::-1] - tf.constant(CAFFE_MEAN_BGR, tf.float32)
    if spec.kind == "imagenet_torch":
        return (xf / 255.0 - tf.constant(TORCH_MEAN, tf.float32)) / tf.constant(TORCH_STD, tf.float32)
    channels = xf.shape[-1]
    if channels is None:
        raise ValueError("tf_preprocess with 'meanstd' needs a known channel dimension")
    mean, std = _mean_std(spec, int(channels))
    return (xf - tf.constant(mean)) / tf.constant(std)


def set_run_preprocessing(run_path: Any, spec: PreprocessSpec) -> None:
    """Record ``spec`` as run ``run_path``'s pixel scaling (atomic manifest rewrite; other fields kept).

    The sweep cache is keyed by the scaling, so statistics are recomputed for the new one.
    """
    import json
    from pathlib import Path

    from core.run.atomic import atomic_write_json
    from core.run.runs import MANIFEST

    path = Path(run_path) / MANIFEST
    raw = json.loads(path.read_text(encoding="utf-8"))
    raw.setdefault("input", {})["preprocessing"] = spec.to_dict()
    atomic_write_json(path, raw)
