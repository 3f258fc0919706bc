"""Pixel scaling a model does itself: Rescaling / Normalization layers right after its input."""
from __future__ import annotations

import keras

from core.engine.graph import build_graph
from core.run.preprocess import PreprocessSpec

SCALING_LAYERS = (keras.layers.Rescaling, keras.layers.Normalization)
# ops that only move or convert values: looking through them still sees "right after the input"
_PASS_THROUGH = (keras.layers.InputLayer, keras.layers.Reshape, keras.layers.Permute, keras.layers.Activation)


def _describe(name: str, layer: keras.layers.Layer) -> str:
    if isinstance(layer, keras.layers.Rescaling):
        return f"{name} (Rescaling x*{layer.scale:g}{layer.offset:+g})"
    return f"{name} (Normalization)"


def detect_scaling(model: keras.Model) -> PreprocessSpec | None:
    """``none`` (raw 0-255 pixels), marked detected, when the model starts by scaling its input itself
    (keras.applications MobileNetV3, EfficientNet, ConvNeXt... or a user's Rescaling layer); else None."""
    graph = build_graph(model)
    found = []
    for name, layer in graph.layers():
        if isinstance(layer, SCALING_LAYERS):
            found.append(_describe(name, layer))
        elif isinstance(layer, keras.Model) or isinstance(layer, _PASS_THROUGH):
            continue
        else:
            break  # the first layer that computes features: scaling after it is not input scaling
    if not found:
        return None
    return PreprocessSpec("none", source="detected", note="the model scales raw 0-255 pixels itself: "
                                                          + ", ".join(found))
