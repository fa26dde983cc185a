"""Procedural renderer: a :class:`~distar.worlds.shapes.grammar.Spec` -> a 32×32 RGB image + ground truth.

Shapes are drawn from signed distance functions in pixel units with a one-pixel linear coverage ramp
(coverage = clamp(½ − sdf, 0, 1)), which antialiases edges. Attributes the prompt leaves out are
sampled: background and colour uniformly (never equal), size uniformly over the allowed sizes, the
radius uniformly within the size's range, the position uniformly over the canvas (a named position
places the centre within ±1.5 px of its target). Colours get a small jitter (σ = 0.02).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from distar.worlds.shapes.grammar import (
    BACKGROUNDS,
    COLOURS,
    GROUP_SIZES,
    IMAGE_SIZE,
    POSITIONS,
    SIZES,
    Spec,
)

#: Half-extent of each shape kind in units of its radius (for placement and spacing).
EXTENT = {"circle": 1.0, "square": 1.2, "diamond": 1.2, "triangle": 1.5}
POSITION_JITTER = 1.5
COLOUR_JITTER = 0.02


@dataclasses.dataclass(frozen=True)
class Scene:
    """Ground truth of a rendered image: every attribute, plus geometry in pixels."""

    shape: str
    count: int
    colour: str
    size: str
    background: str
    #: Nearest named position of the shape's centre (single shapes), else None.
    position: str | None
    centres: tuple[tuple[float, float], ...]
    radii: tuple[float, ...]

    def spec(self) -> Spec:
        """The fully specified prompt that describes this scene."""
        return Spec(self.shape, self.count, self.colour, self.size, self.position, self.background)


#: Pixel-centre coordinates (H, W).
_X, _Y = np.meshgrid(*[np.arange(IMAGE_SIZE, dtype=np.float64) + 0.5] * 2, indexing="xy")


def signed_distance(shape: str, centre: tuple[float, float], radius: float) -> np.ndarray:
    """(H, W) signed distance in pixels to the shape's outline (negative inside)."""
    px, py = _X - centre[0], _Y - centre[1]
    if shape == "circle":
        return np.hypot(px, py) - radius
    if shape == "square":
        qx, qy = np.abs(px) - 0.85 * radius, np.abs(py) - 0.85 * radius
        outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
        return outside + np.minimum(np.maximum(qx, qy), 0)
    if shape == "diamond":
        return (np.abs(px) + np.abs(py) - 1.2 * radius) / math.sqrt(2)
    if shape == "triangle":
        # Equilateral triangle, apex up, centroid at the centre, half side h (Quilez's exact SDF).
        h, k = 1.3 * radius, math.sqrt(3)
        x, y = np.abs(px) - h, -py + h / k
        fold = x + k * y > 0
        x, y = np.where(fold, (x - k * y) / 2, x), np.where(fold, (-k * x - y) / 2, y)
        x = x - np.clip(x, -2 * h, 0)
        return -np.hypot(x, y) * np.sign(y)
    raise ValueError(f"unknown shape {shape!r}")


def _nearest_position(centre: tuple[float, float]) -> str:
    return min(POSITIONS, key=lambda n: math.dist(POSITIONS[n], centre))


def _place(
    spec: Spec, radius: list[float], rng: np.random.Generator
) -> tuple[list[tuple[float, float]], list[float]]:
    """(centres, radii) inside the canvas; several shapes never overlap (radii shrink until they fit)."""
    while True:
        reach = [EXTENT[spec.shape] * r + 0.5 for r in radius]
        lo, hi = max(reach), IMAGE_SIZE - max(reach)
        if spec.count == 1:
            if spec.position is None:
                return [(float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)))], radius
            target = np.array(POSITIONS[spec.position]) + rng.uniform(-POSITION_JITTER, POSITION_JITTER, 2)
            x, y = np.clip(target, lo, hi)
            return [(float(x), float(y))], radius
        for _ in range(200):
            centres = rng.uniform(lo, hi, size=(spec.count, 2))
            gaps = [
                math.dist(centres[i], centres[j]) - reach[i] - reach[j]
                for i in range(spec.count)
                for j in range(i)
            ]
            if min(gaps) >= 0:
                return [(float(x), float(y)) for x, y in centres], radius
        radius = [0.9 * r for r in radius]


def render(spec: Spec, rng: np.random.Generator) -> tuple[np.ndarray, Scene]:
    """One image (3, 32, 32) float32 in [0, 1] for ``spec``, with its ground truth."""
    backgrounds = [b for b in BACKGROUNDS if b != spec.colour]
    background = spec.background or backgrounds[rng.integers(len(backgrounds))]
    colours = [c for c in COLOURS if c != background]
    colour = spec.colour or colours[rng.integers(len(colours))]
    sizes = list(SIZES) if spec.count == 1 else list(GROUP_SIZES)
    size = spec.size or sizes[rng.integers(len(sizes))]
    radius = [float(rng.uniform(*SIZES[size])) for _ in range(spec.count)]
    centres, radius = _place(spec, radius, rng)

    def jitter(rgb: Sequence[float]) -> np.ndarray:
        return np.clip(np.asarray(rgb) + rng.normal(0, COLOUR_JITTER, 3), 0, 1)

    bg, fg = jitter(BACKGROUNDS[background]), jitter(COLOURS[colour])
    image = np.broadcast_to(bg[:, None, None], (3, IMAGE_SIZE, IMAGE_SIZE)).copy()
    for centre, r in zip(centres, radius):
        coverage = np.clip(0.5 - signed_distance(spec.shape, centre, r), 0, 1)
        image = image * (1 - coverage) + fg[:, None, None] * coverage
    position = _nearest_position(centres[0]) if spec.count == 1 else None
    scene = Scene(spec.shape, spec.count, colour, size, background, position, tuple(centres), tuple(radius))
    return image.astype(np.float32), scene
