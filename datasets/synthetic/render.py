"""Procedural renderer for the synthetic image family.

Every image is a pure function of ``(seed, stream, index)``: a per-image
``numpy`` generator is derived from those three numbers, so any subset of a
pool can be re-rendered on any worker, in any order, bit-identically. That is
what lets Ray Data shard the "read" stage freely and what keeps the
pre-training corpus of the tiny CLIP disjoint from the benchmark splits (they
use different streams).

Two visual domains exist:

* ``photo`` -- a coloured shape with a fill pattern on a background, the
  analogue of natural images;
* ``scan`` -- a faint grayscale shape in textured noise, the analogue of a
  medical modality where a web-trained CLIP transfers poorly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

SHAPES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "ring",
    "crescent", "bar", "hexagon", "diamond", "ellipse", "arrow",
)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (240, 135, 25),
    "yellow": (230, 215, 40),
    "green": (40, 165, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 70, 220),
    "purple": (135, 50, 190),
    "pink": (240, 125, 185),
    "white": (240, 240, 240),
    "brown": (125, 80, 40),
}

PATTERNS: tuple[str, ...] = ("solid", "striped", "dotted", "checkered")
BACKGROUNDS: tuple[str, ...] = ("dark", "light", "noisy", "gradient")
SIZES: dict[str, tuple[float, float]] = {
    "small": (0.16, 0.22),
    "medium": (0.23, 0.30),
    "large": (0.31, 0.40),
}

#: Shapes whose identity depends on orientation get only a small rotation.
_ORIENTED = {"square", "diamond", "triangle", "arrow", "crescent"}

SUPERSAMPLE = 2


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw one image; also the source of its caption."""

    shape: str | None  # None draws an empty scene
    color: str
    pattern: str
    background: str
    size: str
    domain: str = "photo"  # "photo" or "scan"
    contrast: float = 1.0  # scan domain: shape intensity above the tissue
    extra_shapes: tuple[str, ...] = ()  # scan domain: further shapes, each placed on its own (multi-label findings)


def image_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator that owns every random choice made for one image."""
    return np.random.default_rng([int(seed), int(stream), int(index)])


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of a unit-sized shape in its local coordinates (v points up)."""
    r = np.hypot(u, v)
    if shape == "circle":
        return r <= 1.0
    if shape == "ellipse":
        return u**2 + (v / 0.5) ** 2 <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "triangle":
        return (v >= -0.6) & (np.abs(u) <= 0.62 * (0.95 - v))
    if shape == "hexagon":
        return np.maximum(np.abs(u), 0.5 * np.abs(u) + 0.866 * np.abs(v)) <= 0.9
    if shape == "star":
        theta = np.arctan2(v, u)
        return r <= 0.42 + 0.55 * (0.5 + 0.5 * np.cos(5 * theta + np.pi / 2)) ** 3
    if shape == "cross":
        return ((np.abs(u) <= 0.27) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.27) & (np.abs(u) <= 0.95))
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.58)
    if shape == "crescent":
        return (r <= 1.0) & ((u - 0.45) ** 2 + v**2 > 0.78**2)
    if shape == "bar":
        return (np.abs(u) <= 0.95) & (np.abs(v) <= 0.22)
    if shape == "arrow":
        shaft = (u >= -0.95) & (u <= 0.25) & (np.abs(v) <= 0.17)
        head = (u >= 0.15) & (np.abs(v) <= 1.05 * (0.95 - u))
        return shaft | head
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _pattern(pattern: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Fill modulation in [0, 1]; 1 is the full shape colour."""
    freq = rng.uniform(2.6, 3.4)
    if pattern == "solid":
        return np.ones_like(u)
    if pattern == "striped":
        return (np.sin(freq * np.pi * u) > 0).astype(np.float32)
    if pattern == "dotted":
        du = np.mod(u * freq, 1.0) - 0.5
        dv = np.mod(v * freq, 1.0) - 0.5
        return (du**2 + dv**2 <= 0.09).astype(np.float32)
    if pattern == "checkered":
        return ((np.floor(u * freq) + np.floor(v * freq)) % 2 == 0).astype(np.float32)
    raise ValueError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: bilinear upsampling of a coarse grid."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    t = np.linspace(0, cells, size, dtype=np.float32)
    i0 = np.minimum(t.astype(int), cells - 1)
    f = t - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _background(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    if kind == "dark":
        return np.full((size, size, 3), rng.uniform(10, 55), np.float32) + rng.normal(0, 4, (1, 1, 3))
    if kind == "light":
        return np.full((size, size, 3), rng.uniform(185, 240), np.float32) + rng.normal(0, 4, (1, 1, 3))
    if kind == "noisy":
        base = rng.uniform(70, 170)
        noise = rng.normal(0, 38, (size, size, 1)).astype(np.float32)
        return np.repeat(base + noise, 3, axis=2)
    if kind == "gradient":
        a, b = rng.uniform(20, 235, size=(2, 3))
        t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
        img = a * (1 - t) + b * t
        return np.broadcast_to(img, (size, size, 3)).astype(np.float32)
    raise ValueError(f"unknown background {kind!r}; known: {', '.join(BACKGROUNDS)}")


def _local_coords(scene: Scene, rng: np.random.Generator, size: int):
    """Pixel grid mapped into the shape's rotated, scaled, translated frame."""
    lo, hi = SIZES[scene.size]
    radius = rng.uniform(lo, hi)
    margin = radius + 0.04
    cx, cy = rng.uniform(margin, 1 - margin, size=2)
    max_angle = 0.26 if scene.shape in _ORIENTED else np.pi
    angle = rng.uniform(-max_angle, max_angle)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.meshgrid(coords - cx, (1 - coords) - cy)
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * x + sin * y) / radius
    v = (-sin * x + cos * y) / radius
    return u.astype(np.float32), v.astype(np.float32)


def render(scene: Scene, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Draw ``scene`` as a ``size x size x 3`` uint8 image."""
    big = size * SUPERSAMPLE
    if scene.domain == "scan":
        img = _render_scan(scene, rng, big)
    else:
        img = _render_photo(scene, rng, big)
    img = img.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _render_photo(scene: Scene, rng: np.random.Generator, big: int) -> np.ndarray:
    img = _background(scene.background, rng, big)
    if scene.shape is None:
        return img
    u, v = _local_coords(scene, rng, big)
    mask = _shape_mask(scene.shape, u, v)
    fill = _pattern(scene.pattern, u, v, rng)
    colour = np.asarray(COLORS[scene.color], np.float32) + rng.normal(0, 14, 3)
    shade = (0.35 + 0.65 * fill)[..., None] * colour
    return np.where(mask[..., None], shade, img)


def _render_scan(scene: Scene, rng: np.random.Generator, big: int) -> np.ndarray:
    tissue = 60 + 90 * _smooth_noise(rng, big, int(rng.integers(3, 7)))
    tissue += 45 * (_smooth_noise(rng, big, 12) - 0.5)
    for shape in ((scene.shape,) if scene.shape is not None else ()) + tuple(scene.extra_shapes):
        u, v = _local_coords(replace(scene, shape=shape), rng, big)
        mask = _shape_mask(shape, u, v).astype(np.float32)
        tissue += 255 * scene.contrast * mask
    tissue += rng.normal(0, 18, tissue.shape)
    return np.repeat(tissue[..., None], 3, axis=2)
