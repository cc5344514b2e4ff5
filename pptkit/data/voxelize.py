"""Grid voxelization by sorting packed integer keys: the hot path of preprocessing and training.

Each point falls in the voxel ``floor(coord / grid_size)``; the three integer coordinates are
packed into one int64 key and sorted stably, which groups the points by voxel and keeps them
in input order within a voxel. Keys of at most 32 bits (rooms up to ~25 x 25 x 5 m at 2 cm)
of up to 4M points take two linear radix passes; otherwise, when key and point index fit
together in 63 bits, the index rides in the low bits of the key and a plain value sort
(much faster than ``argsort``) does it; huge extents fall back to ``np.lexsort``. Everything
after the sort is linear. Voxels come out in lexicographic (x, y, z) order of their grid
coordinates, and the representative of each voxel is its first point in input order, so the
result depends on nothing but the input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Keys of up to two 16-bit digits are radix-sorted when the points are few enough for the
# passes' gathers to stay cache-friendly: 2-6x faster than a value sort from 100k to 1M
# points, even at 4M, slower from about 5M (measured on this project's 2-core test machine).
RADIX_DIGIT_BITS = 16
RADIX_MAX_POINTS = 1 << 22
# Grid coordinates are int32: a scene may span at most this many voxels along each axis.
MAX_GRID_EXTENT = (1 << 31) - 1


class CoordinateRangeError(ValueError):
    """Coordinates that no int32 voxel grid of the given size can hold (or not finite)."""


@dataclass(frozen=True)
class Voxelization:
    """Which voxel each point falls in, for N points and M occupied voxels.

    `order` lists the point indices grouped by voxel (voxel 0's points first, each voxel's
    points in input order) and `starts` where each voxel begins in it; the per-voxel
    reductions below run over them.
    """

    grid_coord: np.ndarray  # (M, 3) int32, >= 0: floor(coord / grid_size) minus its minimum
    index: np.ndarray  # (M,) int64: the first point (in input order) of each voxel
    inverse: np.ndarray  # (N,) int64: the voxel of each point
    counts: np.ndarray  # (M,) int64: points per voxel
    order: np.ndarray  # (N,) int64: point indices grouped by voxel
    starts: np.ndarray  # (M,) int64: where each voxel's points begin in `order`

    @property
    def num_voxels(self) -> int:
        return int(self.counts.shape[0])


def voxelize(coord: np.ndarray, grid_size: float) -> Voxelization:
    """Assign the (N, 3) points `coord` to cubic voxels of edge `grid_size` (same units)."""
    coord = np.asarray(coord)
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise ValueError(f"coord must be (N, 3), got {coord.shape}")
    if not grid_size > 0:
        raise ValueError(f"grid_size must be positive, got {grid_size}")
    n = coord.shape[0]
    if n == 0:
        raise ValueError("cannot voxelize zero points")

    # floor() in the input's own precision (float32 for every reader). Division by a positive
    # number and floor() are monotone, so the grid's bounds come from the coordinates' bounds.
    scale = coord.dtype.type(grid_size) if coord.dtype.kind == "f" else np.float64(grid_size)
    columns = [coord[:, axis] for axis in range(3)]  # per-column reductions: (N, 3).min(0) is slow
    with np.errstate(over="ignore", invalid="ignore"):  # checked just below
        lows = [np.floor(col.min() / scale) for col in columns]
        highs = [np.floor(col.max() / scale) for col in columns]
    for axis, (low, high) in enumerate(zip(lows, highs)):
        if not (np.isfinite(low) and np.isfinite(high)):
            raise CoordinateRangeError(
                f"coordinates along {'xyz'[axis]} reach {float(columns[axis].min()):.4g} .. "
                f"{float(columns[axis].max()):.4g}: not finite, or too large for voxels of "
                f"{grid_size:g}")
        if high - low >= MAX_GRID_EXTENT:
            raise CoordinateRangeError(
                f"coordinates along {'xyz'[axis]} span {float(columns[axis].min()):.4g} .. "
                f"{float(columns[axis].max()):.4g}: more than {MAX_GRID_EXTENT:,} voxels of "
                f"{grid_size:g} (wrong units, or outlier points?)")
    dims = [int(high - low) + 1 for low, high in zip(lows, highs)]

    index_bits = max(1, (n - 1).bit_length())
    key_bits = (dims[0] * dims[1] * dims[2] - 1).bit_length()
    if key_bits + index_bits <= 63:
        # Buffers are reused: at 10M points every fresh array costs page faults.
        key = np.zeros(n, dtype=np.int64)
        scratch = np.empty(n, dtype=np.int64)
        floored = np.empty(n, dtype=scale.dtype)
        for axis, col in enumerate(columns):
            np.divide(col, scale, out=floored)
            np.floor(floored, out=floored)
            floored -= lows[axis]
            scratch[:] = floored
            key *= dims[axis]
            key += scratch
        if key_bits <= 2 * RADIX_DIGIT_BITS and n <= RADIX_MAX_POINTS:
            order = _radix_order(key, key_bits)
            sorted_key = np.take(key, order, out=scratch)
            free = key
        else:
            # (key << index_bits) | point: sorting values groups voxels and keeps input order
            # within them.
            key <<= index_bits
            key |= np.arange(n, dtype=np.int64)
            key.sort()
            order = np.bitwise_and(key, (1 << index_bits) - 1, out=scratch)
            key >>= index_bits
            sorted_key = free = key
        new_voxel = np.empty(n, dtype=bool)
        new_voxel[0] = True
        np.not_equal(sorted_key[1:], sorted_key[:-1], out=new_voxel[1:])
        starts = np.flatnonzero(new_voxel)
        voxel_key = sorted_key[starts]  # decode the voxels' grid coordinates from their keys
        z = voxel_key % dims[2]
        voxel_key //= dims[2]
        grid_coord = np.stack([voxel_key // dims[1], voxel_key % dims[1], z],
                              axis=1).astype(np.int32)
        voxel_of_sorted = np.cumsum(new_voxel, out=free)
    else:  # huge extents: a stable lexicographic sort over the three columns
        columns = [(np.floor(col / scale) - low).astype(np.int64)
                   for col, low in zip(columns, lows)]
        order = np.lexsort((columns[2], columns[1], columns[0]))
        new_voxel = np.empty(n, dtype=bool)
        new_voxel[0] = True
        new_voxel[1:] = False
        for col in columns:
            sorted_col = col[order]
            new_voxel[1:] |= sorted_col[1:] != sorted_col[:-1]
        starts = np.flatnonzero(new_voxel)
        grid_coord = np.stack([col[order[starts]] for col in columns], axis=1).astype(np.int32)
        voxel_of_sorted = np.cumsum(new_voxel, dtype=np.int64)

    counts = np.diff(starts, append=n)
    voxel_of_sorted -= 1
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = voxel_of_sorted
    index = order[starts]
    return Voxelization(grid_coord=grid_coord, index=index, inverse=inverse, counts=counts,
                        order=order, starts=starts)


def _radix_order(key: np.ndarray, key_bits: int) -> np.ndarray:
    """Stable argsort of non-negative `key` < 2**key_bits by least-significant-digit radix
    passes (numpy's stable argsort of uint16 is a linear-time radix sort)."""
    order = np.argsort(key.astype(np.uint16), kind="stable")
    for shift in range(RADIX_DIGIT_BITS, key_bits, RADIX_DIGIT_BITS):
        digit = (np.take(key, order) >> shift).astype(np.uint16)
        order = np.take(order, np.argsort(digit, kind="stable"))
    return order


def voxel_mean(vox: Voxelization, values: np.ndarray) -> np.ndarray:
    """Per-voxel mean of per-point `values` ((N,) or (N, C)), as float64 (M,) or (M, C)."""
    values = np.asarray(values)
    m = vox.num_voxels
    if values.ndim == 1:
        return np.bincount(vox.inverse, weights=values, minlength=m) / vox.counts
    sums = np.empty((m, values.shape[1]), dtype=np.float64)
    for c in range(values.shape[1]):  # bincount needs no gather of the values
        sums[:, c] = np.bincount(vox.inverse, weights=values[:, c], minlength=m)
    return sums / vox.counts[:, None]


def voxel_mode(vox: Voxelization, labels: np.ndarray) -> np.ndarray:
    """Per-voxel most frequent value of integer per-point `labels`; ties go to the smallest.

    Ignore labels (-1) take part like any other value: a voxel that is mostly unlabelled
    stays unlabelled. Returns (M,) with the dtype of `labels`.
    """
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    grouped = np.take(labels, vox.order).astype(np.int64)
    low = int(grouped.min())
    span = int(grouped.max()) - low + 1
    if span * vox.num_voxels >= 1 << 62:  # sparse ids (e.g. instances): compact them first
        values, grouped = np.unique(grouped, return_inverse=True)
        low, span = 0, len(values)
    else:
        values = None
    # One key per point: (voxel, label). Points are already grouped by voxel, so sorting only
    # reorders labels inside each voxel; runs of equal keys are the (voxel, label) counts.
    key = np.repeat(np.arange(vox.num_voxels, dtype=np.int64) * span, vox.counts)
    key += grouped - low
    key.sort()
    run_start = np.flatnonzero(np.diff(key, prepend=-1))
    run_len = np.diff(run_start, append=len(key))
    run_key = key[run_start]
    run_voxel = run_key // span
    # Highest count per voxel, then the first (smallest-label) run reaching it.
    voxel_first_run = np.flatnonzero(np.diff(run_voxel, prepend=-1))
    best = np.maximum.reduceat(run_len, voxel_first_run)
    is_best = run_len == np.repeat(best, np.diff(voxel_first_run, append=len(run_len)))
    best_runs = np.flatnonzero(is_best)
    first_best = best_runs[np.flatnonzero(np.diff(run_voxel[best_runs], prepend=-1))]
    mode = run_key[first_best] - run_voxel[first_best] * span + low
    if values is not None:
        mode = values[mode]
    return mode.astype(labels.dtype)
