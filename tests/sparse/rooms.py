"""Room-like voxel coordinates for sparse-conv tests: synthetic surfaces and real S3DIS rooms."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _rectangles(width: float, depth: float, height: float, rng: np.random.Generator) -> list[tuple]:
    """(origin, u, v) rectangles of a room shell plus tables, shelves and boxes standing in it."""
    o = np.zeros(3)
    ex, ey, ez = np.eye(3)
    rects = [
        (o, width * ex, depth * ey),  # floor
        (o + height * ez, width * ex, depth * ey),  # ceiling
        (o, width * ex, height * ez),  # walls
        (o + depth * ey, width * ex, height * ez),
        (o, depth * ey, height * ez),
        (o + width * ex, depth * ey, height * ez),
    ]
    for _ in range(int(rng.integers(4, 9))):
        size = rng.uniform([0.4, 0.4, 0.4], [1.6, 1.2, min(1.8, height - 0.2)])
        corner = rng.uniform([0.1, 0.1, 0.0], [width - size[0] - 0.1, depth - size[1] - 0.1, 0.0])
        a = corner
        b = corner + size
        rects += [
            (np.array([a[0], a[1], b[2]]), size[0] * ex, size[1] * ey),  # top
            (a, size[0] * ex, size[2] * ez),
            (np.array([a[0], b[1], a[2]]), size[0] * ex, size[2] * ez),
            (a, size[1] * ey, size[2] * ez),
            (np.array([b[0], a[1], a[2]]), size[1] * ey, size[2] * ez),
        ]
    return rects


def synthetic_room(num_voxels: int, rng: np.random.Generator, size: tuple[float, float, float] = (6.0, 5.0, 3.0)) -> np.ndarray:
    """Unique (N, 3) int32 voxel coordinates of a random furnished room of `size` metres, voxelized
    at the grid size that gives about `num_voxels` occupied voxels."""
    rects = _rectangles(*size, rng)
    area = sum(np.linalg.norm(np.cross(u, v)) for _, u, v in rects)
    voxel_size = np.sqrt(area / num_voxels) * 1.27  # jittered surfaces cover ~1.6 voxels per voxel area
    points = []
    for origin, u, v in rects:
        n = int(4 * np.linalg.norm(np.cross(u, v)) / voxel_size**2) + 1
        s, t = rng.random((2, n, 1))
        points.append(origin + s * u + t * v + rng.normal(0, voxel_size / 3, (n, 3)))
    grid = np.floor(np.concatenate(points) / voxel_size).astype(np.int64)
    grid -= grid.min(0)
    return np.unique(grid, axis=0).astype(np.int32)


def s3dis_room(room_dir: Path, voxel_size: float, max_voxels: int | None = None) -> np.ndarray:
    """Unique (N, 3) int32 voxel coordinates of a real S3DIS room (its Annotations/*.txt xyz)."""
    xyz = np.concatenate(
        [np.loadtxt(f, usecols=(0, 1, 2), ndmin=2) for f in sorted((room_dir / "Annotations").glob("*.txt"))]
    )
    grid = np.floor((xyz - xyz.min(0)) / voxel_size).astype(np.int64)
    grid = np.unique(grid, axis=0)
    if max_voxels is not None and len(grid) > max_voxels:
        grid = grid[np.argsort(grid[:, 0], kind="stable")[:max_voxels]]  # a slab: keeps surfaces intact
    return grid.astype(np.int32)
