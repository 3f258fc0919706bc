"""Per-run extraction engine: one model and one traced forward pass serve every checkpoint."""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Collection, Sequence

import numpy as np

from core.run.preprocess import PreprocessSpec, apply_preprocessing
from core.run.runs import Checkpoint, Run

if TYPE_CHECKING:
    from core.run.custom_objects import CustomObjects


@dataclass(frozen=True)
class ProbeSet:
    """Probe images in model-input size: ``images`` uint8 (N, H, W, C) in 0..255 (float32 when fitted by
    ``resize``, whose exact values are fractional), ``labels`` int64 (N,), -1 if unknown."""

    ids: tuple[str, ...]
    images: np.ndarray
    labels: np.ndarray

    @property
    def key(self) -> str:
        """Content hash: identical images and labels give the same key whatever their ids."""
        h = hashlib.sha256()
        h.update(str(self.images.shape).encode())
        if self.images.dtype != np.uint8:  # uint8 keys stay as they were before float probes existed
            h.update(str(self.images.dtype).encode())
            h.update(np.ascontiguousarray(self.images, np.float32).tobytes())
        else:
            h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(np.ascontiguousarray(self.labels, np.int64).tobytes())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.ids)


def run_probe_set(run: Run) -> ProbeSet:
    """The run's fixed labelled probe set (ids ``probe:000`` ...); for a run without a recorded one,
    the probe set a user chose for it (``core.run.probefiles``, ids ``user:000`` ...), else empty."""
    x, y = run.probes()
    prefix = "probe"
    if len(x) == 0:
        from core.run.probefiles import user_probes

        chosen = user_probes(run.path, run.manifest.input_shape)
        if chosen is not None:
            (x, y), prefix = chosen, "user"
    return ProbeSet(tuple(f"{prefix}:{i:03d}" for i in range(len(x))), x, y)


def single_probe(image: np.ndarray, probe_id: str, label: int = -1) -> ProbeSet:
    """A one-image probe set from an uint8 (H, W, C) image already at the model's input size."""
    return ProbeSet((probe_id,), image[None].astype(np.uint8), np.array([label], np.int64))


class RunEngine:
    """A run's model, preprocessing and ``Extractor``; thread-safe (weights are call arguments).

    Build once per run and taps selection (the UI caches it); then
    ``activations(ckpt, images)`` costs one checkpoint read plus one forward pass.
    ``model``'s own variable values are no checkpoint's (``run.load_model()`` gives a model with values).
    """

    def __init__(self, run: Run, taps: Sequence[str] | None = None, trust: bool = False,
                 custom_objects: "CustomObjects | None" = None):
        from core.engine.extract import Extractor
        from core.run.loading import load_model_noted

        self.run = run
        # the forward passes take every checkpoint's weights as arguments: the file's own are never read
        loaded = load_model_noted(run.architecture_path, trust=trust, custom_objects=custom_objects, weights=False)
        self.model = loaded.model
        #: Training-only objects (initializers, regularizers, constraints) left out: ``layer.key = Name``.
        self.dropped: tuple[str, ...] = loaded.dropped
        self.spec = PreprocessSpec.from_dict(run.manifest.preprocessing)
        self._spec_stamp: int | None = None
        self.extractor = Extractor(self.model, list(taps) if taps is not None else None)
        self.se_blocks = self.extractor.se_blocks
        self._lock = threading.Lock()
        self._tap_extractors: OrderedDict[str, Any] = OrderedDict()  # one-tap extractors, newest last

    @property
    def taps(self) -> list[str]:
        return self.extractor.taps

    def tap_kinds(self) -> dict[str, str]:
        return {t.name: t.kind for t in self.extractor.tappable}

    def bn_inputs(self) -> dict[str, str]:
        """BatchNorm variables' path prefix (``<prefix>/moving_mean``) -> name of the tap feeding it, when extracted."""
        import keras

        from core.engine.graph import build_graph

        graph = build_graph(self.model)
        out = {}
        for _name, layer in graph.layers():
            if not isinstance(layer, keras.layers.BatchNormalization):
                continue
            ins = graph.inputs[id(layer)]
            src = graph.producer.get(id(ins[0])) if len(ins) == 1 else None
            if src is not None and graph.name(src) in self.taps:
                out[layer.moving_mean.path.rpartition("/")[0]] = graph.name(src)
        return out

    def weight_layer_order(self) -> list[str]:
        """Layers as the weight tables name them (variable path without its last part), in graph order,
        nested models' layers included."""
        import keras

        from core.engine.graph import build_graph

        order: dict[str, None] = {}
        for _name, layer in build_graph(self.model).layers():
            if not isinstance(layer, keras.Model):
                order.update((v.path.rpartition("/")[0] or v.path, None) for v in layer.weights)
        return list(order)

    def output_tap(self) -> str | None:
        """Tap holding the model's output, if extracted."""
        from core.engine.graph import build_graph

        graph = build_graph(self.model)
        out = graph.model.outputs[0]
        taps = set(self.taps)
        return next((graph.name(op) for op in graph.ops
                     if graph.outputs[id(op)] is out and graph.name(op) in taps), None)

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, C) -> float32 model input as the manifest says (re-read when it changes)."""
        self._refresh_spec()
        return apply_preprocessing(images, self.spec)

    def _refresh_spec(self) -> None:
        """The pixel scaling may be changed in the app while this engine is cached: follow the manifest."""
        from core.run.runs import MANIFEST, Run

        try:
            stamp = (self.run.path / MANIFEST).stat().st_mtime_ns
        except OSError:
            return
        if stamp != self._spec_stamp:
            self.spec = PreprocessSpec.from_dict(Run(self.run.path).manifest.preprocessing)
            self._spec_stamp = stamp

    def read_weights(self, ckpt: Checkpoint, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
        """A checkpoint's arrays by ``variable.path`` (only ``names`` of an npz checkpoint, if given)."""
        if ckpt.kind == "npz":
            return self.run.read_weights(ckpt, architecture=self.model, names=names)
        from core.run.loading import read_weights_file

        # loaded into the model itself: its values are never read (see __init__), no copy to build
        return read_weights_file(ckpt.path, self.model, overwrite=True)

    def reads_quickly(self, ckpt: Checkpoint) -> bool:
        """Whether ``read_weights(ckpt)`` reads the file's values directly (no Keras load)."""
        if ckpt.kind == "npz":
            return True
        from core.run.loading import reads_directly

        return reads_directly(ckpt.path, self.model)

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
        """Build (trace) the one-tap extractor of ``tap`` for ``tap_activations`` (a trace: run it in the background)."""
        from core.engine.extract import Extractor

        with self._lock:
            if tap in self._tap_extractors:
                return
        ex = Extractor(self.model, [tap])
        # the first execution of a traced graph pays for its set-up: here, not in the page
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
            weights = self.read_weights(ckpt, names=ex.used_paths)
            return ex.run_used(weights, self.preprocess(images))[tap]
        except ValueError as e:
            raise ValueError(f"{ckpt.path}: {e}") from e
