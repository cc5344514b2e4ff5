"""Training-time augmentations: small callables over a scene dict, driven by an explicit Generator.

A scene dict holds NumPy arrays: "coord" float32 (N, 3) in metres, "grid_coord" int32 (N, 3),
"color" uint8 or float (N, 3), "normal" float32 (N, 3), "segment" int16 (N,), "instance" int32 (N,),
"name" str, and optionally "inverse" (P,) / "point_segment" (P,) mapping the P original points to
rows, kept for evaluation. Every transform is `transform(data, rng) -> data`: it never writes into
the arrays it was given (a loader may cache them), and a transform that drops or reorders rows
applies the same index to every array whose first dimension is the number of rows, and remaps
"inverse" (rows that no longer exist become -1; GridSample maps them to the kept point of
their voxel).

Defaults follow the ScanNet semantic-segmentation recipe of Pointcept/PPT; `train_transforms`
and `eval_transforms` build its chains. Features the model sees: NormalizeColor maps colours from
[0, 255] to [-1, 1] (colour / 127.5 - 1), concatenated with unit normals by the training stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
from scipy.ndimage import uniform_filter1d

from pptkit.data.voxelize import voxelize

SceneDict = dict[str, Any]

# Keys indexed by original point rather than by row: never re-indexed with the rows.
PER_ORIGINAL_POINT_KEYS = frozenset({"inverse", "point_segment"})


def bounds(coord: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis (min, max) of (N, 3) points; column by column, which NumPy does far faster."""
    low = np.array([coord[:, k].min() for k in range(coord.shape[1])], dtype=coord.dtype)
    high = np.array([coord[:, k].max() for k in range(coord.shape[1])], dtype=coord.dtype)
    return low, high


def affine_points(points: np.ndarray, matrix: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """points @ matrix.T + offset for (N, 3) points, float32.

    Written as column arithmetic: NumPy's matmul of an (N, 3) by a (3, 3) matrix goes through
    BLAS, which took 90 ms against 1 ms for 200k points on a busy 2-core machine.
    """
    columns = [points[:, k] for k in range(3)]
    out = np.empty(points.shape, dtype=np.float32)
    for row in range(3):
        value = columns[0] * np.float32(matrix[row, 0])
        value += columns[1] * np.float32(matrix[row, 1])
        value += columns[2] * np.float32(matrix[row, 2])
        value += np.float32(offset[row])
        out[:, row] = value
    return out


def sorted_subset(index: np.ndarray, num_rows: int) -> np.ndarray:
    """The distinct row numbers in `index`, ascending (via a boolean mask: O(N), no sort).

    Gathering rows in ascending order streams through memory; random-order gathers of every
    per-row array cost several times more.
    """
    mask = np.zeros(num_rows, dtype=bool)
    mask[index] = True
    return np.flatnonzero(mask)


def standard_normal_f32(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 samples by the Box-Muller transform of float32 uniforms.

    About 3x faster than Generator.standard_normal for float32; tails stop at 5.8 sigma
    (float32 uniforms), which the jitter transforms clip or never reach in practice.
    """
    size = math.prod(shape)
    half = (size + 1) // 2
    uniform = rng.random(2 * half, dtype=np.float32)
    radius = np.log1p(-uniform[:half])  # log(1 - u), finite for u in [0, 1)
    radius *= np.float32(-2.0)
    np.sqrt(radius, out=radius)
    angle = uniform[half:]
    angle *= np.float32(2 * math.pi)
    out = np.empty(2 * half, dtype=np.float32)
    np.multiply(radius, np.cos(angle), out=out[:half])
    np.multiply(radius, np.sin(angle), out=out[half:])
    return out[:size].reshape(shape)


class Transform(Protocol):
    """Anything called as transform(data, rng) -> data."""

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict: ...


def select_rows(data: SceneDict, index: np.ndarray, row_map: np.ndarray | None = None) -> SceneDict:
    """Keep rows `index` of every per-row array; other entries are passed through unchanged.

    `row_map` (old rows,) gives each old row's new row (or -1) for remapping "inverse"; by default
    it is derived from `index` (dropped rows map to -1).
    """
    num_rows = len(data["coord"])
    out: SceneDict = {}
    for key, value in data.items():
        if (
            key not in PER_ORIGINAL_POINT_KEYS
            and isinstance(value, np.ndarray)
            and value.ndim >= 1
            and value.shape[0] == num_rows
        ):
            out[key] = np.take(value, index, axis=0)
        else:
            out[key] = value
    if "inverse" in data:
        if row_map is None:
            row_map = np.full(num_rows, -1, dtype=np.int64)
            row_map[index] = np.arange(len(index))
        inverse = np.asarray(data["inverse"])
        out["inverse"] = np.where(inverse >= 0, row_map[np.maximum(inverse, 0)], -1)
    return out


class Compose:
    """Apply transforms in order, threading one Generator through them."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        for transform in self.transforms:
            data = transform(data, rng)
        return data

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(type(t).__name__ for t in self.transforms) + ")"


class CenterShift:
    """Move the bounding-box centre to the origin in x, y; with `apply_z`, the floor to 0."""

    def __init__(self, apply_z: bool = True):
        self.apply_z = apply_z

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        coord = data["coord"]
        low, high = bounds(coord)
        shift = (low + high) / 2
        shift[2] = low[2] if self.apply_z else 0.0
        return {**data, "coord": coord - shift.astype(coord.dtype)}


class RandomDropout:
    """With probability `dropout_application_ratio`, keep a random 1 - dropout_ratio of the rows."""

    def __init__(self, dropout_ratio: float = 0.2, dropout_application_ratio: float = 0.2):
        if not 0.0 <= dropout_ratio < 1.0:
            raise ValueError(f"dropout_ratio must lie in [0, 1), got {dropout_ratio}")
        self.dropout_ratio = dropout_ratio
        self.dropout_application_ratio = dropout_application_ratio

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        if rng.random() >= self.dropout_application_ratio:
            return data
        num_rows = len(data["coord"])
        keep = rng.choice(num_rows, int(num_rows * (1 - self.dropout_ratio)), replace=False)
        return select_rows(data, sorted_subset(keep, num_rows))


def rotation_matrix(axis: Literal["x", "y", "z"], angle: float) -> np.ndarray:
    """Right-handed rotation by `angle` radians about a coordinate axis, (3, 3) float32."""
    cos, sin = math.cos(angle), math.sin(angle)
    if axis == "x":
        matrix = [[1, 0, 0], [0, cos, -sin], [0, sin, cos]]
    elif axis == "y":
        matrix = [[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]]
    elif axis == "z":
        matrix = [[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]]
    else:
        raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")
    return np.asarray(matrix, dtype=np.float32)


class RandomRotate:
    """Rotate coordinates (and normals) about `axis` by an angle uniform in `angle` (units of pi).

    Applied with probability `p` unless `always_apply`; the pivot is `center`, or the
    bounding-box centre when None.
    """

    def __init__(
        self,
        angle: tuple[float, float] = (-1.0, 1.0),
        axis: Literal["x", "y", "z"] = "z",
        center: tuple[float, float, float] | None = None,
        always_apply: bool = False,
        p: float = 0.5,
    ):
        rotation_matrix(axis, 0.0)  # validates the axis
        self.angle = angle
        self.axis = axis
        self.center = center
        self.always_apply = always_apply
        self.p = p

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        if not self.always_apply and rng.random() >= self.p:
            return data
        angle = rng.uniform(self.angle[0], self.angle[1]) * math.pi
        matrix = rotation_matrix(self.axis, angle)
        coord = data["coord"]
        if self.center is None:
            low, high = bounds(coord)
            center = (low + high) / 2
        else:
            center = np.asarray(self.center, dtype=np.float32)
        # R (coord - c) + c, with the constant folded into one offset.
        offset = center - matrix @ center
        out = {**data, "coord": affine_points(coord, matrix, offset)}
        if "normal" in data:
            out["normal"] = affine_points(data["normal"], matrix, np.zeros(3))
        return out


class RandomScale:
    """Multiply coordinates by a factor uniform in `scale` (one per axis if `anisotropic`)."""

    def __init__(self, scale: tuple[float, float] = (0.9, 1.1), anisotropic: bool = False):
        self.scale = scale
        self.anisotropic = anisotropic

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        factor = rng.uniform(self.scale[0], self.scale[1], 3 if self.anisotropic else 1)
        return {**data, "coord": data["coord"] * factor.astype(np.float32)}


class RandomFlip:
    """Mirror x, then independently y, each with probability `p` (normals follow)."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        sign = np.ones(3, dtype=np.float32)
        if rng.random() < self.p:
            sign[0] = -1
        if rng.random() < self.p:
            sign[1] = -1
        if (sign == 1).all():
            return data
        out = {**data, "coord": data["coord"] * sign}
        if "normal" in data:
            out["normal"] = data["normal"] * sign
        return out


class RandomJitter:
    """Add Gaussian noise (std `sigma` metres) to every coordinate, clipped to +-`clip`."""

    def __init__(self, sigma: float = 0.005, clip: float = 0.02):
        if clip <= 0:
            raise ValueError(f"clip must be positive, got {clip}")
        self.sigma = sigma
        self.clip = clip

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        coord = data["coord"]
        jitter = standard_normal_f32(rng, coord.shape)
        jitter *= np.float32(self.sigma)
        np.clip(jitter, -self.clip, self.clip, out=jitter)
        jitter += coord
        return {**data, "coord": jitter}


def elastic_noise_grid(
    coord: np.ndarray, granularity: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Blurred Gaussian noise on a grid of spacing `granularity` covering `coord` with a margin.

    Returns (noise (D0, D1, D2, 3) float32, origin (3,) float32): node (i, j, k) sits at
    origin + granularity * (i, j, k), origin = coord.min - granularity, and D = extent // g + 3,
    as in the reference, which blurs twice with 3-wide box filters along each axis (zero
    outside); uniform_filter1d computes the same box filter.
    """
    low, high = bounds(coord)
    return _noise_grid(low, high, granularity, rng)


def _noise_grid(
    low: np.ndarray, high: np.ndarray, granularity: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    shape = ((high - low) // np.float32(granularity)).astype(np.int64) + 3
    noise = rng.standard_normal((*shape, 3), dtype=np.float32)
    for _ in range(2):
        for axis in range(3):
            noise = uniform_filter1d(noise, size=3, axis=axis, mode="constant", cval=0.0)
    return noise, (low - np.float32(granularity)).astype(np.float32)


def trilinear_interpolate(
    grid: np.ndarray, origin: np.ndarray, spacing: float, points: np.ndarray
) -> np.ndarray:
    """Trilinearly interpolate a vector field `grid` (D0, D1, D2, C) at `points` (N, 3), float32.

    Node (i, j, k) sits at origin + spacing * (i, j, k). Equals scipy's
    RegularGridInterpolator(method="linear") inside the grid; points outside are clamped to the
    border cell (the elastic distortion never produces any).
    """
    points_t = np.ascontiguousarray(points.T, dtype=np.float32)
    return _trilinear_columns(grid, origin, spacing, points_t).T


def _trilinear_columns(
    grid: np.ndarray, origin: np.ndarray, spacing: float, points_t: np.ndarray, chunk: int = 16384
) -> np.ndarray:
    """trilinear_interpolate on column-major points (3, N) -> (C, N).

    Gathers the 8 corners with 1-D `take`s per channel and blends them in place, chunk by
    chunk so the temporaries stay in cache.
    """
    dims = np.asarray(grid.shape[:3], dtype=np.int32)
    if (dims < 2).any():
        raise ValueError(f"grid needs at least 2 nodes per axis, got shape {grid.shape}")
    tables = [np.ascontiguousarray(grid[..., c]).ravel() for c in range(grid.shape[3])]
    stride_x, stride_y = int(dims[1] * dims[2]), int(dims[2])
    offsets = (0, 1, stride_y, stride_y + 1, stride_x, stride_x + 1,
               stride_x + stride_y, stride_x + stride_y + 1)
    last_cell = (dims - 2)[:, None]
    origin_col = np.asarray(origin, dtype=np.float32)[:, None]
    inv_spacing = np.float32(1.0 / spacing)
    num_points = points_t.shape[1]
    out = np.empty((len(tables), num_points), dtype=np.float32)
    for start in range(0, num_points, chunk):
        frac = points_t[:, start : start + chunk] - origin_col
        frac *= inv_spacing
        cell = np.floor(frac).astype(np.int32)
        np.clip(cell, 0, last_cell, out=cell)
        frac -= cell
        np.clip(frac, 0.0, 1.0, out=frac)
        fx, fy, fz = frac
        base = cell[0] * stride_x
        base += cell[1] * stride_y
        base += cell[2]
        corners = [base + offset for offset in offsets]
        for c, table in enumerate(tables):
            v000, v001, v010, v011, v100, v101, v110, v111 = (table.take(k) for k in corners)
            for low, high, weight in (
                (v000, v001, fz), (v010, v011, fz), (v100, v101, fz), (v110, v111, fz),
                (v000, v010, fy), (v100, v110, fy), (v000, v100, fx),
            ):  # low += (high - low) * weight, in place: the result ends in v000
                high -= low
                high *= weight
                low += high
            out[c, start : start + chunk] = v000
    return out


class ElasticDistortion:
    """Warp coordinates by smooth random displacement fields, one per (granularity, magnitude).

    Applied with probability `p`. Per pair: Gaussian noise on a grid of spacing `granularity`
    metres, box-blurred (elastic_noise_grid), trilinearly interpolated at every point and scaled
    by `magnitude`; pairs apply in sequence, each on the previous result, as in the reference.
    """

    def __init__(
        self,
        distortion_params: Sequence[tuple[float, float]] = ((0.2, 0.4), (0.8, 1.6)),
        p: float = 0.95,
    ):
        self.distortion_params = [(float(g), float(m)) for g, m in distortion_params]
        self.p = p

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        if rng.random() >= self.p:
            return data
        coord_t = np.array(data["coord"].T, dtype=np.float32, order="C")  # (3, N) working copy
        for granularity, magnitude in self.distortion_params:
            low, high = coord_t.min(axis=1), coord_t.max(axis=1)
            noise, origin = _noise_grid(low, high, granularity, rng)
            displacement = _trilinear_columns(noise, origin, granularity, coord_t)
            displacement *= np.float32(magnitude)
            coord_t += displacement
        return {**data, "coord": np.ascontiguousarray(coord_t.T)}


def _as_color_dtype(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Clip to [0, 255]; round back to uint8 if the input colours were uint8, else float32."""
    np.clip(values, 0.0, 255.0, out=values)
    if like.dtype == np.uint8:
        return np.rint(values, out=values).astype(np.uint8)
    return values


class ChromaticAutoContrast:
    """With probability `p`, stretch each colour channel to [0, 255] and blend with the original.

    The blend weight is `blend_factor`, or uniform in [0, 1) when None. Colours are in [0, 255]
    (uint8 stays uint8); a constant channel is left as it is.
    """

    def __init__(self, p: float = 0.2, blend_factor: float | None = None):
        self.p = p
        self.blend_factor = blend_factor

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        if rng.random() >= self.p:
            return data
        color = data["color"]
        values = color.astype(np.float32)
        low, high = bounds(values)
        span = high - low
        scale = np.where(span > 0, 255.0 / np.maximum(span, 1e-12), 1.0).astype(np.float32)
        offset = np.where(span > 0, low, 0.0).astype(np.float32)
        blend = rng.random() if self.blend_factor is None else self.blend_factor
        # (1 - b) * c + b * (c - lo) * s  ==  c * ((1 - b) + b * s) - b * lo * s
        gain = np.float32(1 - blend) + np.float32(blend) * scale
        values = values * gain - np.float32(blend) * offset * scale
        return {**data, "color": _as_color_dtype(values, color)}


class ChromaticTranslation:
    """With probability `p`, add one random offset per channel, uniform in +-ratio * 255."""

    def __init__(self, p: float = 0.95, ratio: float = 0.05):
        self.p = p
        self.ratio = ratio

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        if rng.random() >= self.p:
            return data
        color = data["color"]
        shift = ((rng.random(3) - 0.5) * 255 * 2 * self.ratio).astype(np.float32)
        return {**data, "color": _as_color_dtype(color + shift, color)}


class ChromaticJitter:
    """With probability `p`, add Gaussian noise of std `std` * 255 to every colour value."""

    def __init__(self, p: float = 0.95, std: float = 0.05):
        self.p = p
        self.std = std

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        if rng.random() >= self.p:
            return data
        color = data["color"]
        noise = standard_normal_f32(rng, color.shape)
        noise *= np.float32(self.std * 255)
        noise += color
        return {**data, "color": _as_color_dtype(noise, color)}


class GridSample:
    """Keep one uniformly random point per `grid_size` voxel and set "grid_coord" to its voxel.

    Voxels come from pptkit's voxelize (which groups the points of each voxel in `order`); one
    uniform draw per voxel picks its representative, so the pick differs per call. "inverse" is
    remapped so that every original point follows its voxel's kept point.
    """

    def __init__(self, grid_size: float = 0.02):
        if grid_size <= 0:
            raise ValueError(f"grid_size must be positive, got {grid_size}")
        self.grid_size = grid_size

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        num_rows = len(data["coord"])
        voxels = voxelize(data["coord"], self.grid_size)
        offset = (rng.random(voxels.num_voxels) * voxels.counts).astype(np.int64)
        np.minimum(offset, voxels.counts - 1, out=offset)
        offset += voxels.starts
        keep = sorted_subset(voxels.order[offset], num_rows)  # one row per voxel, ascending
        voxel_of_kept = voxels.inverse[keep]
        row_map = None
        if "inverse" in data:  # every row follows the kept row of its voxel
            new_row_of_voxel = np.empty(voxels.num_voxels, dtype=np.int64)
            new_row_of_voxel[voxel_of_kept] = np.arange(len(keep))
            row_map = new_row_of_voxel[voxels.inverse]
        out = select_rows(data, keep, row_map)
        grid_coord = np.take(voxels.grid_coord, voxel_of_kept, axis=0)
        out["grid_coord"] = grid_coord.astype(np.int32, copy=False)
        return out


class SphereCrop:
    """Keep the `point_max` points nearest to a centre when there are more.

    With `sample_rate`, keep that fraction of the points instead (the reference crops
    Structured3D scenes to 0.8 and S3DIS rooms to 0.6 of their points). The centre is a random
    point (mode "random") or the bounding-box centre (mode "center").
    """

    def __init__(self, point_max: int = 100_000, mode: Literal["random", "center"] = "random",
                 sample_rate: float | None = None):
        if point_max < 1:
            raise ValueError(f"point_max must be at least 1, got {point_max}")
        if mode not in ("random", "center"):
            raise ValueError(f"mode must be 'random' or 'center', got {mode!r}")
        if sample_rate is not None and not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.point_max = point_max
        self.mode = mode
        self.sample_rate = sample_rate

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        coord = data["coord"]
        keep = self.point_max if self.sample_rate is None else max(1, int(self.sample_rate * len(coord)))
        if len(coord) <= keep:
            return data
        if self.mode == "random":
            center = coord[rng.integers(len(coord))]
        else:
            low, high = bounds(coord)
            center = (low + high) / 2
        offset = coord - center
        distance = np.einsum("ij,ij->i", offset, offset)
        nearest = np.argpartition(distance, keep - 1)[:keep]
        return select_rows(data, sorted_subset(nearest, len(coord)))


class NormalizeColor:
    """Map colours from [0, 255] to float32 [-1, 1] (colour / 127.5 - 1), the model's features."""

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        color = data["color"].astype(np.float32)
        color *= np.float32(1 / 127.5)
        color -= np.float32(1)
        return {**data, "color": color}


def train_transforms(grid_size: float = 0.02, point_max: int = 100_000, crop_rate: float | None = None) -> Compose:
    """The training chain of Pointcept/PPT (coordinates in metres, colours 0-255).

    The datasets differ only in the crop: ScanNet keeps at most `point_max` points, Structured3D
    and S3DIS a fraction `crop_rate` of their points (then at most `point_max`).
    """
    return Compose([
        CenterShift(apply_z=True),
        RandomDropout(dropout_ratio=0.2, dropout_application_ratio=0.2),
        RandomRotate(angle=(-1.0, 1.0), axis="z", center=(0.0, 0.0, 0.0), p=0.5),
        RandomRotate(angle=(-1 / 64, 1 / 64), axis="x", p=0.5),
        RandomRotate(angle=(-1 / 64, 1 / 64), axis="y", p=0.5),
        RandomScale(scale=(0.9, 1.1)),
        RandomFlip(p=0.5),
        RandomJitter(sigma=0.005, clip=0.02),
        ElasticDistortion(distortion_params=((0.2, 0.4), (0.8, 1.6))),
        ChromaticAutoContrast(p=0.2, blend_factor=None),
        ChromaticTranslation(p=0.95, ratio=0.05),
        ChromaticJitter(p=0.95, std=0.05),
        GridSample(grid_size=grid_size),
        *([SphereCrop(mode="random", sample_rate=crop_rate)] if crop_rate is not None else []),
        SphereCrop(point_max=point_max, mode="random"),
        CenterShift(apply_z=False),
        NormalizeColor(),
    ])


def mix_scenes(scenes: Sequence[SceneDict]) -> SceneDict:
    """Mix3D: overlay scenes (already centred by their chains) into one, keeping every row.

    Per-row arrays are concatenated in order, so labels and instances travel with their points;
    rows of different scenes falling into one voxel are merged later by the batch collation.
    """
    if not scenes:
        raise ValueError("mix_scenes needs at least one scene")
    num_rows = [len(s["coord"]) for s in scenes]
    out: SceneDict = {"name": "+".join(str(s.get("name", "")) for s in scenes)}
    for key, value in scenes[0].items():
        if key == "name":
            continue
        values = [s[key] for s in scenes]
        if key in PER_ORIGINAL_POINT_KEYS or not all(
                isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == n for v, n in zip(values, num_rows)):
            raise ValueError(f"cannot mix scenes with per-scene entry '{key}'")
        out[key] = np.concatenate(values, axis=0)
    return out


def eval_transforms(grid_size: float = 0.02) -> Compose:
    """The recipe's validation chain: centre, one point per voxel, normalised colours.

    GridSample keeps "inverse" valid, so predictions can be scattered back to original points.
    """
    return Compose([
        CenterShift(apply_z=True),
        GridSample(grid_size=grid_size),
        CenterShift(apply_z=False),
        NormalizeColor(),
    ])


class NormalizeCoord:
    """Centre coordinates on their mean and scale them into the unit sphere (the farthest point
    at distance 1), as the ShapeNet / ModelNet loaders of Point-MAE and ACT normalise objects."""

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        coord = data["coord"].astype(np.float32)
        coord = coord - coord.mean(axis=0, dtype=np.float64).astype(np.float32)
        radius = float(np.sqrt(np.einsum("ij,ij->i", coord, coord).max(initial=0.0)))
        if radius > 0:
            coord *= np.float32(1.0 / radius)
        return {**data, "coord": coord}


class RandomShift:
    """Add one random offset to every coordinate, uniform per axis in `shift` (metres, or units of
    the normalised object). With RandomScale(anisotropic=True) before it, this is Point-MAE /
    ACT's PointcloudScaleAndTranslate (scale U(2/3, 3/2), shift U(-0.2, 0.2) per axis)."""

    def __init__(self, shift: tuple[tuple[float, float], ...] = ((-0.2, 0.2), (-0.2, 0.2), (0.0, 0.0))):
        if len(shift) != 3:
            raise ValueError(f"shift needs one (low, high) range per axis, got {shift}")
        self.shift = tuple((float(low), float(high)) for low, high in shift)

    def __call__(self, data: SceneDict, rng: np.random.Generator) -> SceneDict:
        offset = np.array([rng.uniform(low, high) for low, high in self.shift], dtype=np.float32)
        return {**data, "coord": data["coord"] + offset}
