"""Drawing the synthetic set's images: shapes, textures, colours, backgrounds, distractors and noise."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:
    from core.training.data import SyntheticConfig

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

# Uniforms drawn per image, columns: 0-7 background, 8-15 and 30-31 distractor, 16-29 object
# and texture, 32-47 background blotch grid. Changing the count changes every image (the noise
# bytes come next from the same per-image stream).
N_PARAMS = 48
_SECONDARY = 0.35  # texture's second colour = primary * this (same hue, darker)
_OUTLINE = 240.0


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


def render_chunk(cfg: SyntheticConfig, factors: np.ndarray, u: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Draw B images -> uint8 (B, H, W, 3) from class factors (B, 4), uniforms (B, N_PARAMS), noise bytes."""
    b, size = len(factors), cfg.image_size
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
