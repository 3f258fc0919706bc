"""Training data: a deterministic synthetic shape/texture/colour set, image folders, and tf.data pipelines."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from core.run.preprocess import PreprocessSpec, tf_preprocess
from core.training.shapes import COLOURS, EDGES, N_PARAMS, SHAPES, TEXTURES, render_chunk

if TYPE_CHECKING:  # TensorFlow is imported lazily so that numpy-only callers start fast
    import tensorflow as tf

# ---------------------------------------------------------------------------------------------
# Synthetic data set
# ---------------------------------------------------------------------------------------------

# 13, 5 and 9 are pairwise coprime: class j takes shape j%13, texture j%5, colour j%9, so the
# first 585 classes are distinct triples (Chinese remainder theorem) and any two of the first 45
# differ in at least two of the three factors. Classes 585.. repeat them with a white outline.
_BASE_CLASSES = len(SHAPES) * len(TEXTURES) * len(COLOURS)
MAX_CLASSES = _BASE_CLASSES * len(EDGES)
SPLITS: dict[str, int] = {"train": 0, "val": 1, "probe": 2}


@dataclass(frozen=True)
class SyntheticConfig:
    """Synthetic data set: class = colour × shape × texture (× outline beyond 585 classes).

    Nuisances (random per image): position, scale, rotation, mirroring, slight stretch, colour
    jitter, texture frequency/phase/direction, background grey level/tint/pattern, an optional
    small distractor shape behind the object, and pixel noise. Class definitions depend only on
    ``num_classes`` (not on ``seed``); images depend on (seed, split, index).
    """

    num_classes: int = 25
    image_size: int = 64  # square images, image_size × image_size
    seed: int = 0
    noise: float = 6.0  # pixel noise std, 0..255 units
    scale_range: tuple[float, float] = (0.35, 0.7)  # object radius / half the image side
    max_rotation: float = 30.0  # degrees either way
    colour_jitter: float = 0.12  # relative brightness jitter of the object colour
    background_contrast: float = 35.0  # max amplitude of the background pattern, 0..255 units
    clutter: float = 0.5  # probability of one small distractor shape

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale_range", tuple(float(v) for v in self.scale_range))
        if not 2 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be in 2..{MAX_CLASSES}, got {self.num_classes}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        lo, hi = self.scale_range
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi <= 1, got {self.scale_range}")
        if self.noise < 0 or not 0 <= self.clutter <= 1:
            raise ValueError("noise must be >= 0 and clutter a probability in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        """Manifest ``dataset`` form: ``{"kind": "synthetic", ...fields}``."""
        d = asdict(self)
        d["scale_range"] = list(self.scale_range)
        return {"kind": "synthetic", **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SyntheticConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def class_factors(num_classes: int) -> np.ndarray:
    """int64 (num_classes, 4): (shape, texture, colour, edge) index of every class."""
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in 1..{MAX_CLASSES}, got {num_classes}")
    i = np.arange(num_classes)
    j = i % _BASE_CLASSES
    return np.stack([j % len(SHAPES), j % len(TEXTURES), j % len(COLOURS), i // _BASE_CLASSES], 1).astype(np.int64)


def class_names(cfg: SyntheticConfig) -> list[str]:
    """Readable unique names, e.g. ``red-circle-solid``, ``blue-star-dots-outlined``."""
    out = []
    for s, t, c, e in class_factors(cfg.num_classes):
        name = f"{COLOURS[c][0]}-{SHAPES[s]}-{TEXTURES[t]}"
        out.append(name + ("-outlined" if e else ""))
    return out


def _chunk_size(image_size: int) -> int:
    """Images rendered together: ~1M pixels per float array, at most 256 images."""
    return int(max(1, min(256, 2**20 // (image_size * image_size))))


def _labels(seed: int, split_id: int, k: int, idx: np.ndarray) -> np.ndarray:
    """Balanced labels: every block of k consecutive indices holds each class once, shuffled."""
    out = np.empty(idx.shape, np.int64)
    blocks = idx // k
    for b in np.unique(blocks):
        perm = np.random.default_rng([seed, split_id, 1, int(b)]).permutation(k)
        sel = blocks == b
        out[sel] = perm[idx[sel] % k]
    return out


def _draw_params(seed: int, split_id: int, idx: np.ndarray, pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image uniforms (B, N_PARAMS) float64 and noise bytes (B, pixels) uint8.

    One generator per (seed, split, index) makes an image independent of which other images
    are generated with it.
    """
    u = np.empty((len(idx), N_PARAMS))
    noise = np.empty((len(idx), pixels), np.uint8)
    for row, i in enumerate(idx):
        rng = np.random.default_rng([seed, split_id, 0, int(i)])
        u[row] = rng.random(N_PARAMS)
        noise[row] = np.frombuffer(rng.bytes(pixels), np.uint8)
    return u, noise


def make_synthetic(
    cfg: SyntheticConfig, n: int, split: str = "train", *, start: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Images ``start .. start+n-1`` of a split -> (x uint8 (n, S, S, 3), y int64 (n,)).

    Deterministic in (cfg, split, index): the same index gives identical bytes whatever ``n``
    or ``start`` (images are rendered in fixed, index-aligned chunks). Labels are balanced: each
    block of ``num_classes`` consecutive indices holds every class once.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if n < 0 or start < 0:
        raise ValueError(f"n and start must be >= 0, got n={n}, start={start}")
    size, sid = cfg.image_size, SPLITS[split]
    x = np.empty((n, size, size, 3), np.uint8)
    y = np.empty((n,), np.int64)
    chunk = _chunk_size(size)
    for c0 in range((start // chunk) * chunk, start + n, chunk):
        idx = np.arange(c0, c0 + chunk)
        labels = _labels(cfg.seed, sid, cfg.num_classes, idx)
        u, noise = _draw_params(cfg.seed, sid, idx, size * size * 3)
        imgs = render_chunk(cfg, class_factors(cfg.num_classes)[labels], u, noise)
        lo, hi = max(c0, start), min(c0 + chunk, start + n)
        x[lo - start : hi - start] = imgs[lo - c0 : hi - c0]
        y[lo - start : hi - start] = labels[lo - c0 : hi - c0]
    return x, y


# ---------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------

# What tf.io.decode_image reads (TIFF is not among them).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"})


def list_image_folder(root: str | os.PathLike) -> tuple[list[str], np.ndarray, list[str]]:
    """One sub-folder per class -> (paths, labels int64 (N,), class_names).

    Classes are the sub-folders that contain at least one image (searched recursively), sorted
    by name; label i is class_names[i]. Files are recognised by extension (see
    IMAGE_EXTENSIONS); other files and hidden entries are skipped.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"Image folder {root} does not exist or is not a folder.")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths: list[str] = []
    labels: list[int] = []
    names: list[str] = []
    for d in subdirs:
        files = _images_under(d)
        if not files:
            continue
        labels.extend([len(names)] * len(files))
        names.append(d.name)
        paths.extend(files)
    if not paths:
        loose = len(_images_in(root))
        hint = (
            f" It holds {loose} image(s) directly; move them into one sub-folder per class."
            if loose else ""
        )
        raise ValueError(
            f"No images found in class sub-folders of {root} (expected {root}/<class>/<image>, "
            f"extensions {', '.join(sorted(IMAGE_EXTENSIONS))}).{hint}"
        )
    if len(names) < 2:
        raise ValueError(
            f"Image folder {root} has only one class with images ({names[0]!r}); "
            "a classifier needs at least two class sub-folders."
        )
    return paths, np.asarray(labels, np.int64), names


def _images_in(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and _is_image_name(p.name)]


def _images_under(folder: Path) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image_name(f))
    return out


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# ---------------------------------------------------------------------------------------------
# tf.data pipeline
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths (applied on images scaled to [0, 1])."""

    flip: bool = True  # random horizontal flip
    pad_fraction: float = 0.125  # reflect-pad by this fraction of the side, random crop back
    brightness: float = 0.15  # max additive delta
    contrast: float = 0.2  # factor in [1 - c, 1 + c]
    saturation: float = 0.2  # factor in [1 - s, 1 + s] (3-channel images only)


def _hw(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        return int(image_size), int(image_size)
    h, w = image_size
    return int(h), int(w)


def _tf_crop_resize(img: "tf.Tensor", h: int, w: int) -> "tf.Tensor":
    """uint8 (h0, w0, C) -> float32 (h, w, C): centre-crop to the target aspect, then resize (as probes are)."""
    import tensorflow as tf

    shape = tf.shape(img)
    h0, w0 = shape[0], shape[1]
    target = w / h
    crop_w = tf.minimum(w0, tf.maximum(1, tf.cast(tf.round(tf.cast(h0, tf.float32) * target), tf.int32)))
    crop_h = tf.minimum(h0, tf.maximum(1, tf.cast(tf.round(tf.cast(w0, tf.float32) / target), tf.int32)))
    img = tf.image.crop_to_bounding_box(img, (h0 - crop_h) // 2, (w0 - crop_w) // 2, crop_h, crop_w)
    out = tf.image.resize(img, (h, w), method="bilinear", antialias=True)
    return tf.clip_by_value(tf.round(out), 0.0, 255.0)


def _augment(x: "tf.Tensor", seed: "tf.Tensor", aug: AugmentConfig) -> "tf.Tensor":
    """float32 (H, W, C) in 0..255 -> augmented float32 (H, W, C) in 0..255; stateless, seeded by ``seed`` (2,)."""
    import tensorflow as tf

    seeds = tf.random.split(seed, 5)
    h, w, c = x.shape
    x = x / 255.0
    if aug.flip:
        x = tf.image.stateless_random_flip_left_right(x, seeds[0])
    pad_h, pad_w = int(round(aug.pad_fraction * h)), int(round(aug.pad_fraction * w))
    if pad_h or pad_w:
        pad_h, pad_w = min(pad_h, h - 1), min(pad_w, w - 1)  # REFLECT needs pad < side
        x = tf.pad(x, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]], mode="REFLECT")
        x = tf.image.stateless_random_crop(x, (h, w, c), seeds[1])
    if aug.brightness > 0:
        x = tf.image.stateless_random_brightness(x, aug.brightness, seeds[2])
    if aug.contrast > 0:
        x = tf.image.stateless_random_contrast(x, 1 - aug.contrast, 1 + aug.contrast, seeds[3])
    if aug.saturation > 0 and c == 3:
        x = tf.image.stateless_random_saturation(x, 1 - aug.saturation, 1 + aug.saturation, seeds[4])
    return tf.clip_by_value(x, 0.0, 1.0) * 255.0


def make_dataset(
    x_or_paths: np.ndarray | Sequence[str | os.PathLike],
    y: np.ndarray | Sequence[int],
    batch_size: int,
    image_size: int | tuple[int, int],
    augment: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    repeat: bool = False,
    preprocessing: PreprocessSpec | Mapping[str, Any] | None = None,
    *,
    channels: int = 3,
    augment_config: AugmentConfig = AugmentConfig(),
) -> "tf.data.Dataset":
    """Batches of (float32 (B, H, W, C) preprocessed images, int64 (B,) labels), prefetched.

    ``x_or_paths``: uint8 array (N, H, W, C), or image file paths (decoded with tf.io, first
    frame of animations, centre-cropped to the target aspect and resized; undecodable files are
    skipped with a logged warning). ``preprocessing`` defaults to scale01. Augmentation (flip,
    reflect-pad + random crop, brightness/contrast/saturation jitter) is stateless and seeded:
    the same seed gives the same stream; every pass over the data (and every repeat) draws
    fresh augmentations. Shuffling reshuffles each pass, also seeded.
    """
    import tensorflow as tf

    spec = preprocessing if isinstance(preprocessing, PreprocessSpec) else PreprocessSpec.from_dict(preprocessing)
    h, w = _hw(image_size)
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    n = len(labels)
    if n == 0:
        raise ValueError("make_dataset needs at least one example")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from_files = not (isinstance(x_or_paths, np.ndarray) and x_or_paths.dtype.kind not in "USO")
    if len(x_or_paths) != n:
        raise ValueError(f"{len(x_or_paths)} images but {n} labels")

    label_t = tf.constant(labels)
    needs_resize = False
    if from_files:
        path_t = tf.constant([os.fspath(p) for p in x_or_paths])

        def load(i: tf.Tensor) -> tf.Tensor:
            raw = tf.io.read_file(tf.gather(path_t, i))
            img = tf.io.decode_image(raw, channels=channels, expand_animations=False)
            img.set_shape([None, None, channels])
            return _tf_crop_resize(img, h, w)
    else:
        x = np.asarray(x_or_paths)
        if x.ndim != 4 or x.dtype != np.uint8:
            raise ValueError(f"images must be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
        needs_resize = x.shape[1:3] != (h, w)
        image_t = tf.constant(x)  # indexed per element, so shuffling never copies images

        def load(i: tf.Tensor) -> tf.Tensor:
            img = tf.gather(image_t, i)
            return _tf_crop_resize(img, h, w) if needs_resize else tf.cast(img, tf.float32)

    idx = tf.data.Dataset.range(n)
    if shuffle:
        idx = idx.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        idx = idx.repeat()
    if not (from_files or augment or needs_resize):
        # In-memory images at the model's size: gather a whole batch at once (one op per batch,
        # not per image); the stream is the same as the per-image path's.
        ds = idx.batch(batch_size).map(
            lambda i: (tf_preprocess(tf.cast(tf.gather(image_t, i), tf.float32), spec), tf.gather(label_t, i)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)
    if augment:
        rnd = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip(idx, rnd).map(
            lambda i, r: (_augment(load(i), tf.stack([r, tf.constant(seed, tf.int64)]), augment_config),
                          tf.gather(label_t, i)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    else:
        ds = idx.map(lambda i: (load(i), tf.gather(label_t, i)),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if from_files:
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda xb, yb: (tf_preprocess(xb, spec), yb), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
