"""The built-in seed-style CNN: conv blocks, two residual connections, SE blocks, 3 dense layers."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Keras is imported when a network is built: ArchConfig alone starts fast
    import keras

ACTIVATIONS = ("relu", "elu", "sigmoid")


@dataclass(frozen=True)
class ArchConfig:
    """Parameters of the built-in network; saved in the run manifest.

    ``widths[i]`` and ``convs[i]`` describe conv block ``i+1``; a max-pool follows
    every block but the last, which ends in global average pooling.
    """

    input_size: int = 64
    input_channels: int = 3
    num_classes: int = 25
    stem_width: int = 16
    stem_stride: int = 2
    widths: tuple[int, ...] = (24, 32, 48, 64, 96)
    convs: tuple[int, ...] = (2, 2, 2, 2, 1)
    residual_blocks: tuple[int, ...] = (2, 3)
    se: bool = True
    se_blocks: tuple[int, ...] = (1, 2, 3, 4, 5)
    se_ratio: int = 4
    se_gate_bias: float = 0.0
    near_one_weight: float = 0.0
    activation: str = "relu"
    batchnorm: bool = True
    # 0.9 rather than Keras's 0.99: runs here are short (a mini-epoch can be ~30 steps), and
    # with 0.99 the moving statistics lag the batch statistics for hundreds of steps.
    bn_momentum: float = 0.9
    dense_units: tuple[int, ...] = (128, 64)
    l2: float = 0.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if len(self.widths) != len(self.convs):
            raise ValueError("widths and convs must have the same length (one entry per block)")
        if self.input_size < self.stem_stride * 2 ** (len(self.widths) - 1):
            raise ValueError(f"input_size {self.input_size} too small for {len(self.widths)} blocks")
        for b in (*self.residual_blocks, *self.se_blocks):
            if not 1 <= b <= len(self.widths):
                raise ValueError(f"block index {b} out of range 1..{len(self.widths)}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ArchConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(names)
        if unknown:
            raise ValueError(f"unknown architecture options {sorted(unknown)}; valid: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _conv(cfg: ArchConfig, x, width: int, kernel: int, name: str, strides: int = 1):
    import keras

    reg = keras.regularizers.L2(cfg.l2) if cfg.l2 else None
    return keras.layers.Conv2D(width, kernel, strides=strides, padding="same", use_bias=not cfg.batchnorm,
                               kernel_regularizer=reg, name=name)(x)


def _conv_bn_act(cfg: ArchConfig, x, width: int, prefix: str, j: int | str = "", strides: int = 1):
    from keras import layers

    x = _conv(cfg, x, width, 3, f"{prefix}_conv{j}", strides)
    if cfg.batchnorm:
        x = layers.BatchNormalization(momentum=cfg.bn_momentum, name=f"{prefix}_bn{j}")(x)
    return layers.Activation(cfg.activation, name=f"{prefix}_act{j}")(x)


def se_block(x, ratio: int, prefix: str, gate_bias: float = 0.0, near_one_weight: float = 0.0):
    """Squeeze-and-excitation: GAP -> Dense relu -> Dense -> sigmoid gate -> Multiply.

    x: (B, H, W, C) -> (B, H, W, C). The logits (``*_se_expand``) and the gate
    (``*_se_gate``) are separate layers so both can be tapped.
    """
    import keras
    from keras import layers

    from core.run.keras_objects import NearOneRegularizer

    c = x.shape[-1]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}_se_squeeze")(x)
    s = layers.Dense(max(1, c // ratio), activation="relu", name=f"{prefix}_se_reduce")(s)
    s = layers.Dense(c, bias_initializer=keras.initializers.Constant(gate_bias),
                     name=f"{prefix}_se_expand")(s)
    reg = NearOneRegularizer(near_one_weight) if near_one_weight else None
    g = layers.Activation("sigmoid", activity_regularizer=reg, name=f"{prefix}_se_gate")(s)
    return layers.Multiply(name=f"{prefix}_se_excite")([x, g])


def build_seed_net(cfg: ArchConfig = ArchConfig(), seed: int | None = 0) -> keras.Model:
    """Build the network; input is preprocessed float32 (B, S, S, C), output softmax (B, classes)."""
    import keras
    from keras import layers

    if seed is not None:
        keras.utils.set_random_seed(seed)
    inp = keras.Input((cfg.input_size, cfg.input_size, cfg.input_channels), name="image")
    # A strided stem keeps the full-resolution cost low (training speed on CPUs).
    x = _conv_bn_act(cfg, inp, cfg.stem_width, "stem", strides=cfg.stem_stride)
    n = len(cfg.widths)
    for i, (w, k) in enumerate(zip(cfg.widths, cfg.convs), start=1):
        prefix = f"block{i}"
        shortcut = x
        for j in range(1, k + 1):
            x = _conv_bn_act(cfg, x, w, prefix, j)
        if cfg.se and i in cfg.se_blocks:
            x = se_block(x, cfg.se_ratio, prefix, cfg.se_gate_bias, cfg.near_one_weight)
        if i in cfg.residual_blocks:
            if shortcut.shape[-1] != w:
                shortcut = _conv(cfg, shortcut, w, 1, f"{prefix}_proj")
            x = layers.Add(name=f"{prefix}_add")([x, shortcut])
        if i < n:
            x = layers.MaxPooling2D(2, name=f"{prefix}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    for d, units in enumerate(cfg.dense_units, start=1):
        x = layers.Dense(units, activation=cfg.activation, name=f"dense{d}")(x)
        if cfg.dropout:
            x = layers.Dropout(cfg.dropout, name=f"dropout{d}")(x)
    out = layers.Dense(cfg.num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inp, out, name="seed_net")
