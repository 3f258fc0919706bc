"""Per-run extraction engine: one model and one traced forward pass serve every checkpoint."""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from core.run.preprocess import PreprocessSpec, apply_preprocessing
from core.run.runs import Checkpoint, Run


@dataclass(frozen=True)
class ProbeSet:
    """Probe images in model-input size: ``images`` uint8 (N, H, W, C), ``labels`` int64 (N,), -1 if unknown."""

    ids: tuple[str, ...]
    images: np.ndarray
    labels: np.ndarray

    @property
    def key(self) -> str:
        """Content hash: identical images and labels give the same key whatever their ids."""
        h = hashlib.sha256()
        h.update(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images, np.uint8).tobytes())
        h.update(np.ascontiguousarray(self.labels, np.int64).tobytes())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.ids)


def run_probe_set(run: Run) -> ProbeSet:
    """The run's fixed labelled probe set (ids ``probe:000`` ...)."""
    x, y = run.probes()
    return ProbeSet(tuple(f"probe:{i:03d}" for i in range(len(x))), x, y)


def single_probe(image: np.ndarray, probe_id: str, label: int = -1) -> ProbeSet:
    """A one-image probe set from an uint8 (H, W, C) image already at the model's input size."""
    return ProbeSet((probe_id,), image[None].astype(np.uint8), np.array([label], np.int64))


class RunEngine:
    """A run's model, preprocessing and ``Extractor``; thread-safe (weights are call arguments).

    Build once per run and taps selection (the UI caches it); then
    ``activations(ckpt, images)`` costs one checkpoint read plus one forward pass.
    """

    def __init__(self, run: Run, taps: Sequence[str] | None = None, trust: bool = False):
        from core.engine.extract import Extractor

        self.run = run
        self.model = run.load_model(trust=trust)
        self.spec = PreprocessSpec.from_dict(run.manifest.preprocessing)
        self.extractor = Extractor(self.model, list(taps) if taps is not None else None)
        self.se_blocks = self.extractor.se_blocks
        self._lock = threading.Lock()
        self._tap_extractors: OrderedDict[str, Any] = OrderedDict()  # one-tap extractors, newest last

    @property
    def taps(self) -> list[str]:
        return self.extractor.taps

    def tap_kinds(self) -> dict[str, str]:
        return {t.name: t.kind for t in self.extractor.tappable}

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> float32 model input as the manifest says."""
        return apply_preprocessing(images, self.spec)

    def read_weights(self, ckpt: Checkpoint) -> dict[str, np.ndarray]:
        return self.run.read_weights(ckpt, architecture=self.model)

    def weight_values(self, weights: dict[str, np.ndarray]):
        return self.extractor.weights_from_mapping(weights)

    def activations(self, ckpt: Checkpoint, images: np.ndarray) -> dict[str, np.ndarray]:
        """Every tap for uint8 images (N, H, W, C) at checkpoint ``ckpt``: {tap: (N, ...)}."""
        try:
            wv = self.weight_values(self.read_weights(ckpt))
        except ValueError as e:  # a checkpoint of another architecture: say which file
            raise ValueError(f"{ckpt.path}: {e}") from e
        return self.extractor.run(wv, self.preprocess(images))

    #: One-tap extractors kept per engine (each holds a traced function).
    TAP_EXTRACTORS = 8

    def prepare_tap(self, tap: str) -> None:
        """Build (trace) the one-tap extractor of ``tap`` for ``tap_activations``: 0.1-0.5 s, run it in the background."""
        from core.engine.extract import Extractor

        with self._lock:
            if tap in self._tap_extractors:
                return
        ex = Extractor(self.model, [tap])
        # the first execution of a traced graph pays for its optimisation: here, not in the page
        ex.run_used({v.path: v.numpy() for v in self.model.variables},
                    np.zeros((1, *self.model.input_shape[1:]), "float32"))
        with self._lock:
            self._tap_extractors[tap] = ex
            while len(self._tap_extractors) > self.TAP_EXTRACTORS:
                self._tap_extractors.popitem(last=False)

    def tap_activations(self, ckpt: Checkpoint, images: np.ndarray, tap: str) -> np.ndarray | None:
        """One tap for uint8 images (N, H, W, C) -> (N, ...), or None until ``prepare_tap(tap)`` has run.

        Reads only the weights the tap depends on and runs the network only up to it: for an
        early layer a small part of ``activations``' cost, for the last ones about the same.
        """
        with self._lock:
            ex = self._tap_extractors.get(tap)
            if ex is not None:
                self._tap_extractors.move_to_end(tap)
        if ex is None:
            return None
        try:
            weights = self.run.read_weights(ckpt, architecture=self.model, names=ex.used_paths)
            return ex.run_used(weights, self.preprocess(images))[tap]
        except ValueError as e:
            raise ValueError(f"{ckpt.path}: {e}") from e
