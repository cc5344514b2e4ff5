"""voxelize and the per-voxel reductions against a brute-force dictionary reference."""

from __future__ import annotations

import sys
from collections import Counter, defaultdict

import numpy as np
import pytest

from pptkit.data import voxel_mean, voxel_mode, voxelize
from pptkit.data.voxelize import CoordinateRangeError


def reference(coord: np.ndarray, grid_size: float, labels: np.ndarray):
    """Per voxel (keyed by its shifted grid coordinate): point list, mean, majority label."""
    grid = np.floor(coord / coord.dtype.type(grid_size)).astype(np.int64)
    grid -= grid.min(axis=0)
    points: dict[tuple, list[int]] = defaultdict(list)
    for i, g in enumerate(map(tuple, grid)):
        points[g].append(i)
    means = {g: coord[idx].astype(np.float64).mean(axis=0) for g, idx in points.items()}
    modes = {}
    for g, idx in points.items():
        counter = Counter(labels[idx].tolist())
        best = max(counter.values())
        modes[g] = min(label for label, n in counter.items() if n == best)
    return points, means, modes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    # Clustered points so that many voxels hold several points; negative coordinates too.
    coord = (rng.normal(0, 0.15, (n, 3)) + rng.integers(-2, 3, (n, 3)) * 0.3).astype(np.float32)
    labels = rng.integers(-1, 4, n).astype(np.int16)
    vox = voxelize(coord, 0.05)
    points, means, modes = reference(coord, 0.05, labels)

    assert vox.grid_coord.dtype == np.int32 and vox.inverse.dtype == np.int64
    assert vox.index.dtype == np.int64 and vox.counts.dtype == np.int64
    assert vox.num_voxels == len(points)
    assert (vox.grid_coord >= 0).all() and (vox.grid_coord.min(axis=0) == 0).all()
    keys = [tuple(g) for g in vox.grid_coord.tolist()]
    assert keys == sorted(keys)  # voxels in lexicographic grid order
    assert set(keys) == set(points)
    for v, key in enumerate(keys):
        members = points[key]
        assert vox.counts[v] == len(members)
        assert vox.index[v] == members[0]  # first point in input order represents the voxel
    # Every point maps to the voxel whose grid coordinate it falls in.
    assert (vox.inverse[vox.index] == np.arange(vox.num_voxels)).all()
    assert np.bincount(vox.inverse).tolist() == vox.counts.tolist()
    for i in rng.choice(n, 200, replace=False):
        assert points[keys[vox.inverse[i]]].count(i) == 1

    mean = voxel_mean(vox, coord)
    np.testing.assert_allclose(mean, np.array([means[k] for k in keys]), rtol=0, atol=1e-6)
    mode = voxel_mode(vox, labels)
    assert mode.dtype == np.int16
    assert mode.tolist() == [modes[k] for k in keys]


def clustered(seed: int, n: int, spread: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-spread, spread, (n // 10, 3))
    return (centres[rng.integers(0, len(centres), n)] + rng.normal(0, 0.03, (n, 3))).astype(np.float32)


@pytest.mark.parametrize("spread, grid", [(1.0, 0.05), (40.0, 0.02)])
def test_sort_paths_agree_with_reference(monkeypatch, spread, grid):
    """Radix passes (keys <= 32 bits, few points) and the packed value sort give one result;
    the wide scene needs keys of more than 32 bits, so it takes the packed sort either way."""
    coord = clustered(7, 4000, spread)
    labels = np.random.default_rng(7).integers(0, 3, len(coord)).astype(np.int16)
    default = voxelize(coord, grid)
    monkeypatch.setattr(sys.modules["pptkit.data.voxelize"], "RADIX_MAX_POINTS", 0)
    packed = voxelize(coord, grid)
    for field in ("grid_coord", "index", "inverse", "counts", "order", "starts"):
        assert np.array_equal(getattr(default, field), getattr(packed, field)), field
    points, means, modes = reference(coord, grid, labels)
    keys = [tuple(g) for g in default.grid_coord.tolist()]
    assert keys == sorted(points) and default.counts.max() > 1
    assert default.index.tolist() == [points[k][0] for k in keys]
    assert voxel_mode(default, labels).tolist() == [modes[k] for k in keys]


def test_deterministic_and_order_of_groups():
    rng = np.random.default_rng(5)
    coord = rng.uniform(0, 1, (5000, 3)).astype(np.float32)
    a, b = voxelize(coord, 0.1), voxelize(coord.copy(), 0.1)
    for field in ("grid_coord", "index", "inverse", "counts", "order", "starts"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    # `order` groups points by voxel, each group in input order.
    grouped = a.inverse[a.order]
    assert (np.diff(grouped) >= 0).all()
    for start, count in zip(a.starts[:20], a.counts[:20]):
        assert (np.diff(a.order[start:start + count]) > 0).all()


def test_mode_ties_sparse_ids_and_1d_mean():
    coord = np.array([[0, 0, 0], [0.01, 0, 0], [0.02, 0, 0], [0.5, 0, 0], [0.51, 0, 0]],
                     dtype=np.float32)
    vox = voxelize(coord, 0.1)
    assert vox.counts.tolist() == [3, 2]
    # Tie (one each of 7 and 3 in voxel 1) goes to the smaller label; huge ids are fine.
    labels = np.array([5, 5, 9, 7, 3], dtype=np.int32)
    assert voxel_mode(vox, labels).tolist() == [5, 3]
    big = np.array([2**30, 2**30, -1, 2**31 - 1, 2**31 - 1], dtype=np.int64)
    assert voxel_mode(vox, big).tolist() == [2**30, 2**31 - 1]
    np.testing.assert_allclose(voxel_mean(vox, np.arange(5.0)), [1.0, 3.5])


def test_huge_extent_uses_the_lexicographic_path():
    # Keys would need more than 63 bits together with the point index: same results anyway.
    coord = np.array([[0, 0, 0], [1e6, 1e6, 1e6], [0, 0, 0.5], [1e6, 1e6, 1e6]], np.float64)
    vox = voxelize(coord, 1e-3)
    assert vox.counts.tolist() == [1, 1, 2]
    assert vox.index.tolist() == [0, 2, 1]
    assert vox.inverse.tolist() == [0, 2, 1, 2]
    assert vox.grid_coord[2].tolist() == [10**9] * 3


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        voxelize(np.zeros((4, 2), np.float32), 0.1)
    with pytest.raises(ValueError):
        voxelize(np.zeros((4, 3), np.float32), 0.0)
    with pytest.raises(ValueError):
        voxelize(np.zeros((0, 3), np.float32), 0.1)


@pytest.mark.parametrize("value, grid, message", [
    (3e38, 0.02, "not finite, or too large"),  # coord / grid overflows float32
    (np.nan, 0.02, "not finite"),
    (1e9, 0.02, "more than 2,147,483,647 voxels"),  # beyond the int32 grid coordinates
])
def test_rejects_coordinates_no_int32_grid_holds(value, grid, message):
    coord = np.zeros((6, 3), np.float32)
    coord[3, 1] = value
    with pytest.raises(CoordinateRangeError, match=f"along y .*{message}"):
        voxelize(coord, grid)
    coord[3, 1] = 4e7  # the widest extent that still fits at 2 cm
    assert voxelize(coord, 0.02).grid_coord[:, 1].max() > 1_999_000_000
