"""Kernel offsets and kernel maps, built with pure PyTorch (CPU or CUDA).

Canonical kernel-offset order (shared by every backend, it defines the weight layout):
offsets are listed lexicographically in (dx, dy, dz), i.e. dz varies fastest, over
range(-(k//2), k//2 + 1) for odd k and range(0, k) for even k (so {0,1}^3 for k = 2), in
units of the *input* tensor stride. Weight row `weight[i]` multiplies the input voxel at
`out_coord + offsets[i] * in_stride` (MinkowskiEngine's convention; for a transposed
convolution the same pairs are used with input and output swapped).

A kernel map lists, per offset, the (input row, output row) pairs it connects, sorted by
output row so that a range of output rows owns a contiguous slice of every offset. Coordinates
are hashed to int64 keys in a frame padded by the kernel reach, so adding an offset to a
coordinate is adding a constant to its key; neighbours are found with one sort of the
input keys and a searchsorted per offset.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor


SPLIT_POINTS = 64  # candidate cuts when output rows are split among workers


def kernel_offsets(kernel_size: int) -> list[tuple[int, int, int]]:
    """Kernel offsets in canonical order (lexicographic (dx, dy, dz), dz fastest)."""
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    axis = range(-(kernel_size // 2), kernel_size // 2 + 1) if kernel_size % 2 else range(kernel_size)
    return list(itertools.product(axis, repeat=3))


@dataclass(frozen=True, eq=False)
class KernelMap:
    """Per-offset (input row, output row) pairs of a convolution, stored offset by offset.

    `in_idx[i]` / `out_idx[i]` hold the pairs of kernel offset `i` (int64, contiguous, empty
    for offsets with no pair), sorted by output row. `identity` is the offset whose pairs are
    exactly row i -> row i for all rows (the centre of a submanifold kernel); its pairs are not
    stored and it is applied as a plain matrix product. `mirrored`: the pairs of offset i,
    swapped, are the pairs of offset K-1-i (true of every submanifold map).
    """

    num_in: int
    num_out: int
    in_idx: tuple[Tensor, ...]
    out_idx: tuple[Tensor, ...]
    identity: int | None
    mirrored: bool = False

    @property
    def kernel_volume(self) -> int:
        return len(self.in_idx)

    @cached_property
    def active(self) -> tuple[int, ...]:
        """Offsets that have stored pairs."""
        return tuple(i for i, idx in enumerate(self.in_idx) if idx.numel())

    @cached_property
    def max_pairs(self) -> int:
        return max((idx.numel() for idx in self.in_idx), default=0)

    @cached_property
    def split_points(self) -> tuple[list[int], list[list[int]], list[int]]:
        """Candidate places to cut the output rows into ranges for parallel workers.

        (rows, starts, below): `rows` = SPLIT_POINTS + 1 evenly spaced output rows from 0 to
        num_out; `starts[k][j]` = position of offset k's first pair whose output row is >=
        rows[j] (pairs are sorted by output row); `below[j]` = pairs with an output row below
        rows[j], the identity's included.
        """
        rows = torch.arange(SPLIT_POINTS + 1, device=self.out_idx[0].device) * self.num_out // SPLIT_POINTS
        starts = torch.stack([torch.searchsorted(idx, rows) for idx in self.out_idx])
        below = starts.sum(0) + (rows if self.identity is not None else 0)
        return rows.tolist(), starts.tolist(), below.tolist()

    @cached_property
    def transposed(self) -> KernelMap:
        """The same pairs per offset with input and output exchanged, sorted by the new output row
        (for transposed convolution and for the input gradient). A mirrored map needs no sorting:
        offset i swapped is offset K-1-i as stored."""
        if self.mirrored:
            flipped = KernelMap(self.num_out, self.num_in, self.in_idx[::-1], self.out_idx[::-1], self.identity, True)
        else:
            in_idx, out_idx = zip(*(_swap_sorted(i, o) for i, o in zip(self.in_idx, self.out_idx)))
            flipped = KernelMap(self.num_out, self.num_in, in_idx, out_idx, self.identity)
        flipped.__dict__["transposed"] = self  # transposing back gives this map, not a re-sorted copy
        return flipped


def _swap_sorted(in_idx: Tensor, out_idx: Tensor) -> tuple[Tensor, Tensor]:
    """Pairs (in, out) -> (out, in), sorted by the new output row (the old input row)."""
    new_out, order = torch.sort(in_idx, stable=True)
    return out_idx[order], new_out


class _Frame:
    """Hashes (batch, gx, gy, gz) grid coordinates to int64 keys inside a padded box."""

    def __init__(self, grids: list[Tensor], pad: int):
        stacked = torch.cat(grids)
        lo = stacked.min(0).values
        hi = stacked.max(0).values
        lo_l = lo.tolist()
        hi_l = hi.tolist()
        self.lo = torch.tensor([lo_l[0]] + [v - pad for v in lo_l[1:]], dtype=torch.int64, device=stacked.device)
        self.span = [hi_l[0] - lo_l[0] + 1] + [h - l + 2 * pad + 1 for l, h in zip(lo_l[1:], hi_l[1:])]
        if self.span[0] * self.span[1] * self.span[2] * self.span[3] >= 2**62:
            raise ValueError(f"coordinate range too large to hash into int64 (spans {self.span})")

    def keys(self, grid: Tensor) -> Tensor:
        g = grid - self.lo
        s = self.span
        return ((g[:, 0] * s[1] + g[:, 1]) * s[2] + g[:, 2]) * s[3] + g[:, 3]

    def delta(self, offset: tuple[int, int, int]) -> int:
        """Key difference produced by moving a coordinate by `offset` grid cells."""
        s = self.span
        return (offset[0] * s[2] + offset[1]) * s[3] + offset[2]


def _grid(coords: Tensor, stride: int) -> Tensor:
    """(batch, x, y, z) in finest units -> int64 grid (batch, x/stride, ...)."""
    coords = coords.to(torch.int64)
    if stride == 1:
        return coords
    return torch.cat([coords[:, :1], torch.div(coords[:, 1:], stride, rounding_mode="floor")], 1)


def _search(sorted_keys: Tensor, order: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of `query` found among the keys: (input rows, query rows in ascending order), int64."""
    if sorted_keys.numel() == 0 or query.numel() == 0:
        empty = torch.empty(0, dtype=torch.int64, device=query.device)
        return empty, empty
    pos = torch.searchsorted(sorted_keys, query)
    pos.clamp_(max=sorted_keys.numel() - 1)
    hit = sorted_keys[pos] == query
    query_rows = hit.nonzero().squeeze(1)
    return order[pos[query_rows]], query_rows


def submanifold_map(coords: Tensor, stride: int, kernel_size: int) -> KernelMap:
    """Kernel map of a submanifold convolution: output rows are the input rows.

    Only half the offsets are searched: the pairs of offset -d are those of +d swapped (and
    re-sorted by output row).
    """
    if kernel_size % 2 == 0:
        raise ValueError(f"submanifold convolution needs an odd kernel_size, got {kernel_size}")
    grid = _grid(coords, stride)
    frame = _Frame([grid], pad=kernel_size // 2)
    keys = frame.keys(grid)
    sorted_keys, order = torch.sort(keys)
    offsets = kernel_offsets(kernel_size)
    centre = len(offsets) // 2
    in_idx: list[Tensor] = [None] * len(offsets)  # type: ignore[list-item]
    out_idx: list[Tensor] = [None] * len(offsets)  # type: ignore[list-item]
    empty = torch.empty(0, dtype=torch.int64, device=coords.device)
    in_idx[centre] = out_idx[centre] = empty
    for i in range(centre):  # offsets before the centre; the mirror of offsets[i] is offsets[-1 - i]
        src, dst = _search(sorted_keys, order, keys + frame.delta(offsets[i]))
        in_idx[i], out_idx[i] = src.contiguous(), dst.contiguous()
        in_idx[-1 - i], out_idx[-1 - i] = _swap_sorted(in_idx[i], out_idx[i])
    n = coords.shape[0]
    return KernelMap(n, n, tuple(in_idx), tuple(out_idx), identity=centre, mirrored=True)


def downsample_coords(coords: Tensor, stride: int, conv_stride: int) -> Tensor:
    """Coordinates after a strided convolution: each input floored to the coarser grid, unique.

    Rows are sorted by (batch, x, y, z), so the result does not depend on the input order.
    """
    out_stride = stride * conv_stride
    grid = _grid(coords, out_stride)
    frame = _Frame([grid], pad=0)
    unique_keys = torch.unique(frame.keys(grid))
    s = frame.span
    z = unique_keys % s[3]
    rest = unique_keys // s[3]
    y = rest % s[2]
    rest = rest // s[2]
    x = rest % s[1]
    b = rest // s[1]
    coarse = torch.stack([b, x, y, z], 1) + frame.lo
    coarse[:, 1:] *= out_stride
    return coarse.to(coords.dtype)


def strided_map(in_coords: Tensor, out_coords: Tensor, stride: int, kernel_size: int, conv_stride: int) -> KernelMap:
    """Kernel map of a strided convolution from `in_coords` (at `stride`) to `out_coords`.

    Output voxel o receives input voxel `o + offset * stride` for each canonical offset.
    """
    in_grid = _grid(in_coords, stride)
    out_grid = _grid(out_coords, stride)  # coarse coordinates expressed in input-grid units
    frame = _Frame([in_grid, out_grid], pad=kernel_size + conv_stride)
    in_keys = frame.keys(in_grid)
    out_keys = frame.keys(out_grid)
    sorted_keys, order = torch.sort(in_keys)
    in_idx, out_idx = [], []
    for offset in kernel_offsets(kernel_size):
        src, dst = _search(sorted_keys, order, out_keys + frame.delta(offset))
        in_idx.append(src.contiguous())
        out_idx.append(dst.contiguous())
    return KernelMap(in_coords.shape[0], out_coords.shape[0], tuple(in_idx), tuple(out_idx), identity=None)
