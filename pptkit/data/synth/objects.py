"""Single parametric shapes for the ModelNet-style `objects` set.

Furniture classes reuse the room builders (drawing each shape's proportions from a randomly
picked style's conventions); small objects (bottle, bowl, cone, cup, stool, ...) are made
here. Shapes are sampled uniformly by area, turned y-up, centred and scaled into the unit
sphere, as ModelNet40's "normal_resampled" files are.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pptkit.data.synth import furniture as fb
from pptkit.data.synth.primitives import PatchSet, sample_random
from pptkit.data.synth.styles import ROOM_STYLES, STYLES

UP = (0.0, 0.0, 1.0)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _furniture(name: str) -> Callable[[np.random.Generator], PatchSet]:
    def build(rng: np.random.Generator) -> PatchSet:
        traits = STYLES[ROOM_STYLES[int(rng.integers(len(ROOM_STYLES)))]]
        item = fb.BUILDERS[name](rng, traits)
        shape = PatchSet()
        for part in item.parts:
            shape.extend(part.visible).extend(part.hidden)
        return shape
    return build


def bottle(rng: np.random.Generator) -> PatchSet:
    r, h = _u(rng, 0.03, 0.05), _u(rng, 0.18, 0.3)
    neck, nh = r * _u(rng, 0.3, 0.45), h * _u(rng, 0.2, 0.35)
    shape = PatchSet().cylinder((0, 0, 0), UP, h - nh - 0.03, r, caps=(True, False))
    shape.frustum((0, 0, h - nh - 0.03), UP, 0.03, r, neck)
    return shape.cylinder((0, 0, h - nh), UP, nh, neck, caps=(False, True))


def bowl(rng: np.random.Generator) -> PatchSet:
    r, h = _u(rng, 0.07, 0.12), _u(rng, 0.04, 0.07)
    foot = r * _u(rng, 0.4, 0.55)
    shape = PatchSet().disc((0, 0, 0), (0, 0, -1), foot)
    shape.frustum((0, 0, 0), UP, h, foot, r)
    shape.frustum((0, 0, 0.006), UP, h - 0.006, foot - 0.006, r - 0.006, inward=True)
    return shape.disc((0, 0, 0.006), UP, foot - 0.006)


def cone(rng: np.random.Generator) -> PatchSet:
    r, h = _u(rng, 0.1, 0.2), _u(rng, 0.25, 0.5)
    return PatchSet().disc((0, 0, 0), (0, 0, -1), r).frustum((0, 0, 0), UP, h, r, 0.002)


def cup(rng: np.random.Generator) -> PatchSet:
    """An open cup with a wall thickness and a square handle."""
    r, h = _u(rng, 0.035, 0.05), _u(rng, 0.08, 0.11)
    shape = PatchSet().disc((0, 0, 0), (0, 0, -1), r * 0.85)
    shape.frustum((0, 0, 0), UP, h, r * 0.85, r)
    shape.frustum((0, 0, 0.006), UP, h - 0.006, r * 0.85 - 0.004, r - 0.004, inward=True)
    shape.disc((0, 0, 0.006), UP, r * 0.85 - 0.004)
    t = 0.008
    x0 = r - 0.002
    shape.box((x0, -t / 2, h * 0.75), (x0 + 0.035, t / 2, h * 0.75 + t))
    shape.box((x0, -t / 2, h * 0.2), (x0 + 0.035, t / 2, h * 0.2 + t))
    shape.box((x0 + 0.035 - t, -t / 2, h * 0.2), (x0 + 0.035, t / 2, h * 0.75 + t))
    return shape


def stool(rng: np.random.Generator) -> PatchSet:
    r, h = _u(rng, 0.15, 0.22), _u(rng, 0.45, 0.75)
    shape = PatchSet().cylinder((0, 0, h - 0.04), UP, 0.04, r, caps=(True, True))
    legs = int(rng.integers(3, 5))
    for k in range(legs):
        a = 2 * np.pi * k / legs
        foot = np.array([np.cos(a), np.sin(a), 0.0]) * r * 1.1
        top = np.array([np.cos(a), np.sin(a), 0.0]) * r * 0.7 + np.array([0, 0, h - 0.04])
        shape.frustum(foot, top - foot, float(np.linalg.norm(top - foot)), 0.015, 0.015)
    return shape


def monitor(rng: np.random.Generator) -> PatchSet:
    w = _u(rng, 0.45, 0.7)
    h = w * _u(rng, 0.5, 0.65)
    shape = PatchSet().box((-0.12, -0.09, 0.0), (0.12, 0.09, 0.015))
    shape.box((-0.025, 0.0, 0.015), (0.025, 0.03, 0.15))
    return shape.box((-w / 2, -0.03, 0.1), (w / 2, 0.0, 0.1 + h))


def vase(rng: np.random.Generator) -> PatchSet:
    r0, r1, r2 = _u(rng, 0.04, 0.06), _u(rng, 0.08, 0.12), _u(rng, 0.03, 0.06)
    h1, h2 = _u(rng, 0.1, 0.2), _u(rng, 0.1, 0.2)
    shape = PatchSet().disc((0, 0, 0), (0, 0, -1), r0)
    shape.frustum((0, 0, 0), UP, h1, r0, r1)
    return shape.frustum((0, 0, h1), UP, h2, r1, r2)


SHAPES: dict[str, Callable[[np.random.Generator], PatchSet]] = {
    "bathtub": _furniture("bathtub"),
    "bed": _furniture("bed"),
    "bookshelf": _furniture("bookshelf"),
    "bottle": bottle,
    "bowl": bowl,
    "chair": _furniture("chair"),
    "cone": cone,
    "cup": cup,
    "desk": _furniture("desk"),
    "dresser": _furniture("dresser"),
    "lamp": _furniture("lamp"),
    "monitor": monitor,
    "night_stand": _furniture("nightstand"),
    "sofa": _furniture("sofa"),
    "stool": stool,
    "table": _furniture("table"),
    "toilet": _furniture("toilet"),
    "vase": vase,
}


def make_object(name: str, rng: np.random.Generator, points: int) -> tuple[np.ndarray, np.ndarray]:
    """`points` (coord, normal) rows on a random instance of shape class `name`, y-up and
    inside the unit sphere."""
    patches = SHAPES[name](rng).arrays()
    area = float(patches.areas().sum())
    samples = sample_random(patches, 1.3 * points / area, rng)
    while len(samples.coord) < points:  # rare: the Poisson draw fell short
        samples = sample_random(patches, 2.0 * points / area, rng)
    pick = np.sort(rng.choice(len(samples.coord), points, replace=False))
    coord, normal = samples.coord[pick], samples.normal[pick]
    # z-up -> y-up, as ModelNet stores its shapes.
    coord = coord[:, [0, 2, 1]] * np.array([1.0, 1.0, -1.0])
    normal = normal[:, [0, 2, 1]] * np.array([1.0, 1.0, -1.0])
    coord = coord - (coord.min(axis=0) + coord.max(axis=0)) / 2
    coord /= np.linalg.norm(coord, axis=1).max()
    return coord, normal
