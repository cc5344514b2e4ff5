"""Turn a laid-out room into points (or a mesh) the way each style's sensor would see it.

`make_scene(style, index, seed)` is deterministic: the generator is derived from (seed,
style, index) alone, so scene i is the same whatever number of scenes is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pptkit.data.synth.primitives import Patches, mesh_grid, sample_grid, sample_random
from pptkit.data.synth.rooms import Room, build_room
from pptkit.data.synth.styles import ALL_STYLES, STYLES, StyleTraits


@dataclass
class SynthScene:
    """Points of one room; `part` indexes `kinds` (each part is one instance) and `patch`
    is the surface patch a point came from (ScanNet's over-segmentation)."""

    name: str
    room_type: str
    coord: np.ndarray  # (N, 3) float32
    color: np.ndarray  # (N, 3) uint8
    normal: np.ndarray  # (N, 3) float32
    part: np.ndarray  # (N,) int32
    patch: np.ndarray  # (N,) int32
    kinds: list[str]  # kind of each part
    faces: np.ndarray | None = None  # (F, 3) int32 for the mesh style


def scene_rng(seed: int, style: str, index: int) -> np.random.Generator:
    """The generator of item `index` of `style`, independent of how many items are made."""
    return np.random.default_rng(np.random.SeedSequence([seed, ALL_STYLES.index(style), index]))


def make_scene(style: str, index: int, seed: int, name: str) -> SynthScene:
    """Build, sample and colour room `index` of `style`."""
    traits = STYLES[style]
    rng = scene_rng(seed, style, index)
    room = build_room(rng, traits, traits.room_types[int(rng.integers(len(traits.room_types)))])
    return render(room, traits, rng, name)


def _gather(room: Room, traits: StyleTraits, rng: np.random.Generator) -> tuple[Patches, np.ndarray]:
    """All patches to sample and the part each belongs to (hidden sides, ceiling per style)."""
    chunks, owner = [], []
    keep_ceiling = rng.random() < traits.ceiling_keep
    for i, part in enumerate(room.parts):
        if part.kind == "ceiling" and not keep_ceiling:
            continue
        vis = part.visible.arrays()
        chunks.append(vis)
        owner.append(np.full(len(vis), i))
        if traits.back_face_keep > 0 and len(part.hidden):
            hid = part.hidden.arrays()
            keep = rng.random(len(hid)) < traits.back_face_keep
            chunks.append(Patches(*(getattr(hid, f)[keep] for f in
                                    ("kind", "o", "e1", "e2", "e3", "r0", "r1", "flip"))))
            owner.append(np.full(int(keep.sum()), i))
    return Patches.concat(chunks), np.concatenate(owner)


def render(room: Room, traits: StyleTraits, rng: np.random.Generator, name: str) -> SynthScene:
    """Sample the room with the style's sensor model, then colour and place it."""
    patches, owner = _gather(room, traits, rng)
    area = float(patches.areas().sum())
    density = min(traits.density, traits.max_points / area)
    faces = None
    if traits.sampling == "mesh":
        samples, faces = mesh_grid(patches, 1.0 / np.sqrt(density))
    elif traits.sampling == "grid":
        samples = sample_grid(patches, 1.0 / np.sqrt(density))
    else:
        samples = sample_random(patches, density, rng)
    coord, normal, patch = samples.coord, samples.normal, samples.patch
    part = owner[patch]
    kinds = [p.kind for p in room.parts]
    kind_of_point = np.asarray(kinds, dtype=object)[part]

    keep = np.ones(len(coord), dtype=bool)
    if traits.ceiling_keep < 1.0:
        keep &= _ceiling_fragment(coord, kind_of_point == "ceiling", room, rng)
    if traits.holes_per_10m2 > 0:
        keep &= _holes(coord, area * traits.holes_per_10m2 / 10.0, rng)
    if traits.normal_noise > 0 or traits.iso_noise > 0:
        coord = (coord + normal * rng.normal(0.0, traits.normal_noise, (len(coord), 1))
                 + rng.normal(0.0, traits.iso_noise, coord.shape))
    color = _colours(coord, normal, part, kinds, room, traits, rng)

    if faces is not None:
        faces = faces[keep[faces].all(axis=1)]
        used = np.zeros(len(coord), dtype=bool)
        used[faces.ravel()] = True
        keep &= used
        faces = (np.cumsum(keep) - 1)[faces]
    coord, color, normal, part, patch = coord[keep], color[keep], normal[keep], part[keep], patch[keep]
    coord, normal = _place(coord, normal, traits, rng)
    return SynthScene(name, room.room_type, coord.astype(np.float32), color,
                      normal.astype(np.float32), part.astype(np.int32), patch.astype(np.int32),
                      kinds, None if faces is None else faces.astype(np.int32))


def _ceiling_fragment(coord: np.ndarray, is_ceiling: np.ndarray, room: Room,
                      rng: np.random.Generator) -> np.ndarray:
    """Keep only the ceiling near the walls, as a scan that barely looked up would."""
    reach = rng.uniform(0.3, 1.2)
    pts = coord[is_ceiling, :2]
    dist = np.full(len(pts), np.inf)
    for wall in room.walls:
        rel = pts - wall.start
        along = np.clip(rel @ wall.direction, 0.0, wall.length)
        dist = np.minimum(dist, np.linalg.norm(rel - along[:, None] * wall.direction, axis=1))
    keep = np.ones(len(coord), dtype=bool)
    keep[is_ceiling] = dist < reach
    return keep


def _holes(coord: np.ndarray, expected: float, rng: np.random.Generator) -> np.ndarray:
    """Drop round patches (unscanned spots) around random surface points."""
    keep = np.ones(len(coord), dtype=bool)
    for _ in range(int(rng.poisson(expected))):
        center = coord[rng.integers(len(coord))]
        radius = rng.uniform(0.08, 0.35)
        keep &= np.einsum("ij,ij->i", coord - center, coord - center) > radius * radius
    return keep


def _colours(coord: np.ndarray, normal: np.ndarray, part: np.ndarray, kinds: list[str], room: Room,
             traits: StyleTraits, rng: np.random.Generator) -> np.ndarray:
    """Palette colour per instance, then the style's lighting, cast, muting and noise."""
    default = np.array([188.0, 188.0, 184.0])
    base = np.array([traits.palette.get(k, default) for k in kinds], dtype=np.float64)
    varied = np.array([k in ("books", "box") for k in kinds]) & (traits.lighting != "flat")
    base[varied] = rng.uniform(40, 220, (int(varied.sum()), 3))
    base *= np.exp(rng.normal(0.0, traits.instance_jitter, (len(kinds), 1)))
    color = base[part]
    if traits.lighting != "flat":
        is_picture = np.asarray([k == "picture" for k in kinds])[part]
        cells = np.floor(coord[is_picture] * 6.0).astype(np.int64)
        texture = ((cells[:, 0] + 7 * cells[:, 1] + 13 * cells[:, 2]) % 5) / 4.0
        color[is_picture] *= (0.5 + texture)[:, None]
    if traits.lighting == "falloff":
        x0, y0, x1, y1 = room.rects[0]
        lights = np.column_stack([rng.uniform(x0, x1, 2), rng.uniform(y0, y1, 2),
                                  np.full(2, room.height - 0.1)])[: int(rng.integers(1, 3))]
        d2 = np.min([np.sum((coord - light) ** 2, axis=1) for light in lights], axis=0)
        gain = (0.55 + 0.5 * np.exp(-d2 / (2 * 2.0 ** 2))) * (0.92 + 0.08 * normal[:, 2])
        color *= gain[:, None]
    elif traits.lighting == "vertical":
        color *= (0.85 + 0.2 * np.clip(coord[:, 2] / room.height, 0, 1))[:, None]
    color *= np.asarray(traits.cast)
    if traits.muted > 0:
        color = color * (1 - traits.muted) + color.mean(axis=1, keepdims=True) * traits.muted
    color += rng.normal(0.0, traits.colour_jitter, color.shape)
    return np.clip(np.round(color), 0, 255).astype(np.uint8)


def _place(coord: np.ndarray, normal: np.ndarray, traits: StyleTraits,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scanner frame: a random yaw (scannet) or the room's offset in its building (s3dis)."""
    if traits.random_yaw:
        a = rng.uniform(0, 2 * np.pi)
        rot = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
        coord, normal = coord @ rot.T, normal @ rot.T
        coord = coord - coord.min(axis=0) + np.array([rng.uniform(0, 0.3), rng.uniform(0, 0.3), 0.0])
    if traits.area_offset:
        coord = coord + np.array([rng.uniform(-30, 30), rng.uniform(-30, 30), 0.0])
    return coord, normal
