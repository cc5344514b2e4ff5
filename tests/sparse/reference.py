"""Brute-force references for sparse ops: explicit loops over voxels and kernel offsets."""

from __future__ import annotations

from torch import Tensor

from pptkit.sparse.kernel_map import kernel_offsets


def _lookup(coords: Tensor) -> dict[tuple[int, ...], int]:
    return {tuple(c): i for i, c in enumerate(coords.tolist())}


def conv_reference(feats: Tensor, in_coords: Tensor, out_coords: Tensor, in_stride: int, weight: Tensor, kernel_size: int) -> Tensor:
    """out[o] = sum_k W[k]^T x[in voxel at out_coord + offset_k * in_stride]."""
    rows = _lookup(in_coords)
    out = feats.new_zeros(out_coords.shape[0], weight.shape[2])
    for o, (b, x, y, z) in enumerate(out_coords.tolist()):
        for k, (dx, dy, dz) in enumerate(kernel_offsets(kernel_size)):
            j = rows.get((b, x + dx * in_stride, y + dy * in_stride, z + dz * in_stride))
            if j is not None:
                out[o] += feats[j] @ weight[k]
    return out


def transposed_reference(feats: Tensor, in_coords: Tensor, out_coords: Tensor, out_stride: int, weight: Tensor, kernel_size: int) -> Tensor:
    """out[f] = sum over coarse voxels c and offsets k with f = c + offset_k * out_stride of W[k]^T x[c]."""
    fine = _lookup(out_coords)
    out = feats.new_zeros(out_coords.shape[0], weight.shape[2])
    for c, (b, x, y, z) in enumerate(in_coords.tolist()):
        for k, (dx, dy, dz) in enumerate(kernel_offsets(kernel_size)):
            f = fine.get((b, x + dx * out_stride, y + dy * out_stride, z + dz * out_stride))
            if f is not None:
                out[f] += feats[c] @ weight[k]
    return out


def downsampled_coords_reference(coords: Tensor, out_stride: int) -> set[tuple[int, ...]]:
    """Set of coarse coordinates: every input floored to multiples of out_stride."""
    return {(b, x // out_stride * out_stride, y // out_stride * out_stride, z // out_stride * out_stride)
            for b, x, y, z in coords.tolist()}
