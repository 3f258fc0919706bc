"""Training data: a deterministic synthetic shape/texture/colour set, image folders, and tf.data pipelines."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from core.run.preprocess import PreprocessSpec, tf_preprocess

if TYPE_CHECKING:  # TensorFlow is imported lazily so that numpy-only callers start fast
    import tensorflow as tf

# ---------------------------------------------------------------------------------------------
# Synthetic data set
# ---------------------------------------------------------------------------------------------

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "cross", "ring", "bars", "star",
    "diamond", "hexagon", "crescent", "ellipse", "semicircle", "arrow",
)
TEXTURES: tuple[str, ...] = ("solid", "stripes", "checker", "dots", "gradient")
COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (215, 40, 40)),
    ("orange", (240, 135, 25)),
    ("yellow", (235, 215, 40)),
    ("green", (45, 165, 60)),
    ("cyan", (40, 190, 205)),
    ("blue", (40, 80, 215)),
    ("purple", (125, 55, 185)),
    ("magenta", (215, 50, 165)),
    ("brown", (135, 85, 45)),
)
EDGES: tuple[str, ...] = ("plain", "outlined")
# 13, 5 and 9 are pairwise coprime: class j takes shape j%13, texture j%5, colour j%9, so the
# first 585 classes are distinct triples (Chinese remainder theorem) and any two of the first 45
# differ in at least two of the three factors. Classes 585.. repeat them with a white outline.
_BASE_CLASSES = len(SHAPES) * len(TEXTURES) * len(COLOURS)
MAX_CLASSES = _BASE_CLASSES * len(EDGES)
SPLITS: dict[str, int] = {"train": 0, "val": 1, "probe": 2}

# Uniforms drawn per image, columns: 0-7 background, 8-15 and 30-31 distractor, 16-29 object
# and texture, 32-47 background blotch grid. Changing the count changes every image (the noise
# bytes come next from the same per-image stream).
_N_PARAMS = 48
_SECONDARY = 0.35  # texture's second colour = primary * this (same hue, darker)
_OUTLINE = 240.0


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
    """Per-image uniforms (B, _N_PARAMS) float64 and noise bytes (B, pixels) uint8.

    One generator per (seed, split, index) makes an image independent of which other images
    are generated with it.
    """
    u = np.empty((len(idx), _N_PARAMS))
    noise = np.empty((len(idx), pixels), np.uint8)
    for row, i in enumerate(idx):
        rng = np.random.default_rng([seed, split_id, 0, int(i)])
        u[row] = rng.random(_N_PARAMS)
        noise[row] = np.frombuffer(rng.bytes(pixels), np.uint8)
    return u, noise


# Signed-distance-like functions in local object units (object fits roughly in radius 1).
# Exact inside and near edges, which is all anti-aliasing needs.

def _box(x: np.ndarray, y: np.ndarray, a: float, b: float) -> np.ndarray:
    return np.maximum(np.abs(x) - a, np.abs(y) - b)


def _tri_up(x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Equilateral triangle, centroid at origin, circumradius r, apex at -y (up on screen)."""
    return np.maximum(y, np.maximum(0.866 * x - 0.5 * y, -0.866 * x - 0.5 * y)) - 0.5 * r


def _sdf_circle(x, y):
    return np.sqrt(x * x + y * y) - 0.9


def _sdf_square(x, y):
    return _box(x, y, 0.8, 0.8)


def _sdf_triangle(x, y):
    return _tri_up(x, y - 0.3, 1.2)


def _sdf_cross(x, y):
    return np.minimum(_box(x, y, 0.95, 0.3), _box(x, y, 0.3, 0.95))


def _sdf_ring(x, y):
    return np.abs(np.sqrt(x * x + y * y) - 0.68) - 0.26


def _sdf_bars(x, y):
    return np.minimum(_box(x, y, 0.17, 0.85), _box(np.abs(x) - 0.62, y, 0.17, 0.85))


def _sdf_star(x, y):
    return np.minimum(_tri_up(x, y, 1.1), _tri_up(x, -y, 1.1))


def _sdf_diamond(x, y):
    a, b = 1.0, 0.6  # elongated, so no rotation makes it a square
    return (np.abs(x) / a + np.abs(y) / b - 1.0) * (a * b / np.hypot(a, b))


def _sdf_hexagon(x, y):
    qx, qy = np.abs(x), np.abs(y)
    return np.maximum(qx, 0.5 * qx + 0.866 * qy) - 0.82


def _sdf_crescent(x, y):
    outer = np.sqrt(x * x + y * y) - 0.9
    bite = np.sqrt((x - 0.45) ** 2 + y * y) - 0.72
    return np.maximum(outer, -bite)


def _sdf_ellipse(x, y):
    return (np.sqrt(x * x + (y / 0.55) ** 2) - 1.0) * 0.55


def _sdf_semicircle(x, y):
    yy = y - 0.45
    return np.maximum(np.sqrt(x * x + yy * yy) - 1.0, yy)


def _sdf_arrow(x, y):
    shaft = _box(x + 0.35, y, 0.55, 0.18)
    head = np.maximum(0.05 - x, 0.5547 * (x - 0.95) + 0.8321 * np.abs(y))
    return np.minimum(shaft, head)


_SDFS: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    _sdf_circle, _sdf_square, _sdf_triangle, _sdf_cross, _sdf_ring, _sdf_bars, _sdf_star,
    _sdf_diamond, _sdf_hexagon, _sdf_crescent, _sdf_ellipse, _sdf_semicircle, _sdf_arrow,
)
assert len(_SDFS) == len(SHAPES)


def _col(v: np.ndarray) -> np.ndarray:
    """(B,) per-image scalars -> (B, 1, 1) for broadcasting against (B, H, W)."""
    return v.astype(np.float32)[:, None, None]


def _texture(kind: int, x: np.ndarray, y: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Mix weight t in [0, 1] (0 = primary colour, 1 = secondary) on local coords (B, H, W)."""
    freq = _col(1.2 + 0.8 * u[:, 20])  # cycles per local unit: 2.4-4 periods across the object
    ph1, ph2 = _col(2 * np.pi * u[:, 21]), _col(2 * np.pi * u[:, 22])
    two_pi = np.float32(2 * np.pi)
    if kind == 0:  # solid
        return np.zeros_like(x)
    if kind == 1:  # stripes
        return np.clip(0.5 + 3.0 * np.sin(two_pi * freq * x + ph1), 0.0, 1.0)
    if kind == 2:  # checker
        f = freq * 0.75
        return np.clip(0.5 + 6.0 * np.sin(two_pi * f * x + ph1) * np.sin(two_pi * f * y + ph2), 0.0, 1.0)
    if kind == 3:  # dots
        gx = (freq * x + _col(u[:, 21])) % 1.0 - 0.5
        gy = (freq * y + _col(u[:, 22])) % 1.0 - 0.5
        return np.clip((0.3 - np.sqrt(gx * gx + gy * gy)) * 8.0, 0.0, 1.0)
    # gradient along a random direction in the object's frame
    ang = 2 * np.pi * u[:, 23]
    s = _col(np.cos(ang)) * x + _col(np.sin(ang)) * y
    return np.clip(0.5 + 0.55 * s, 0.0, 1.0)


def _render_chunk(cfg: SyntheticConfig, labels: np.ndarray, u: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Draw B images -> uint8 (B, H, W, 3) from labels (B,), uniforms (B, _N_PARAMS), noise bytes."""
    b, size = len(labels), cfg.image_size
    g = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1).astype(np.float32)
    gx, gy = g[None, None, :], g[None, :, None]  # image coords in [-1, 1], y pointing down
    half = np.float32(size / 2)

    # Background: tinted grey (low saturation, so object hue carries the class) + a faint pattern.
    grey = 30 + 195 * u[:, 0]
    base = grey[:, None] + 20 * (2 * u[:, 1:4] - 1)  # (B, 3)
    kind = np.minimum((u[:, 4] * 4).astype(int), 3)  # 0 plain, 1 ramp, 2 waves, 3 blotches
    pattern = np.zeros((b, size, size), np.float32)
    for k in (1, 2):
        sel = np.nonzero(kind == k)[0]
        ang = 2 * np.pi * u[sel, 6]
        along = _col(np.cos(ang)) * gx + _col(np.sin(ang)) * gy
        pattern[sel] = along if k == 1 else np.sin(np.float32(np.pi) * _col(1 + 5 * u[sel, 7]) * along)
    sel = np.nonzero(kind == 3)[0]
    if len(sel):  # a random 4×4 grid, bilinearly upsampled
        coarse = (2 * u[sel, 32:48] - 1).reshape(-1, 4, 4).astype(np.float32)
        interp = np.clip(1 - np.abs((g[:, None] + 1) * 1.5 - np.arange(4, dtype=np.float32)[None, :]), 0, 1)
        pattern[sel] = interp @ coarse @ interp.T
    pattern *= _col(cfg.background_contrast * u[:, 5])
    img = np.empty((b, size, size, 3), np.float32)
    img[:] = base.astype(np.float32)[:, None, None, :]
    img += pattern[..., None]

    # Distractor: a small solid circle/square/triangle of any colour, behind the object.
    has = u[:, 8] < cfg.clutter
    if np.any(has):
        sel = np.nonzero(has)[0]
        ds = _col(0.08 + 0.08 * u[sel, 9])
        dx = (gx - _col(1.8 * u[sel, 10] - 0.9)) / ds
        dy = (gy - _col(1.8 * u[sel, 11] - 0.9)) / ds
        shape = np.minimum((u[sel, 12] * 3).astype(int), 2)
        d = np.where(_col(shape == 0), _sdf_circle(dx, dy),
                     np.where(_col(shape == 1), _sdf_square(dx, dy), _sdf_triangle(dx, dy)))
        m = np.clip(0.5 - d * ds * half, 0, 1)[..., None]
        # Half the distractors take a class palette colour, so colour alone cannot name the class.
        palette = np.array([c for _, c in COLOURS], np.float64)
        pick = palette[np.minimum((u[sel, 31] * len(COLOURS)).astype(int), len(COLOURS) - 1)]
        colour = np.where((u[sel, 30] < 0.5)[:, None], pick, 255 * u[sel, 13:16])
        colour = colour.astype(np.float32)[:, None, None, :]
        img[sel] = img[sel] * (1 - m) + colour * m

    # Object frame: translate, rotate, scale, mirror, mild stretch.
    factors = class_factors(cfg.num_classes)[labels]
    lo, hi = cfg.scale_range
    s = lo + (hi - lo) * u[:, 16]
    reach = 1 - 0.8 * s  # keeps most of the object inside the frame
    cx, cy = reach * (2 * u[:, 17] - 1), reach * (2 * u[:, 18] - 1)
    rot = np.deg2rad(cfg.max_rotation) * (2 * u[:, 19] - 1)
    stretch = 0.87 + 0.26 * u[:, 24]
    mirror = np.where(u[:, 25] < 0.5, -1.0, 1.0)
    dx, dy = gx - _col(cx), gy - _col(cy)
    cos, sin = _col(np.cos(rot)), _col(np.sin(rot))
    lx = (dx * cos + dy * sin) * _col(mirror / (s * stretch))
    ly = (dy * cos - dx * sin) * _col(stretch / s)
    ppu = _col(s) * half  # pixels per local unit: turns distances into pixels for anti-aliasing

    dist = np.empty_like(lx)
    tex = np.empty_like(lx)
    for k in np.unique(factors[:, 0]):
        sel = np.nonzero(factors[:, 0] == k)[0]
        dist[sel] = _SDFS[k](lx[sel], ly[sel])
    for k in np.unique(factors[:, 1]):
        sel = np.nonzero(factors[:, 1] == k)[0]
        tex[sel] = _texture(int(k), lx[sel], ly[sel], u[sel])
    dpx = dist * ppu
    mask = np.clip(0.5 - dpx, 0, 1)
    outline_px = np.maximum(1.5, 0.12 * ppu)
    inner = np.where(_col(factors[:, 3] == 1), np.clip(0.5 - (dpx + outline_px), 0, 1), mask)

    palette = np.array([c for _, c in COLOURS], np.float64)[factors[:, 2]]
    primary = palette * (1 + cfg.colour_jitter * (2 * u[:, 26:27] - 1)) + 12 * (2 * u[:, 27:30] - 1)
    primary = np.clip(primary, 0, 255).astype(np.float32)[:, None, None, :]
    tex *= np.float32(_SECONDARY - 1)
    tex += 1  # now the primary colour's factor: 1 (primary) .. _SECONDARY (secondary)
    tex *= inner
    img *= (1 - mask)[..., None]
    img += primary * tex[..., None]
    outlined = np.nonzero(factors[:, 3] == 1)[0]
    if len(outlined):
        img[outlined] += np.float32(_OUTLINE) * (mask[outlined] - inner[outlined])[..., None]

    # Uniform pixel noise from signed bytes (std of uniform -128..127 is ~73.9).
    img += noise.view(np.int8).reshape(b, size, size, 3).astype(np.float32) * np.float32(cfg.noise / 73.9)
    np.rint(img, out=img)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


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
        imgs = _render_chunk(cfg, labels, u, noise)
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
