"""Batching voxelized samples into one SparseTensor."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pptkit.sparse.tensor import CoordinateContext, SparseTensor


def sparse_collate(
    grid_coords: list[np.ndarray | Tensor],
    feats: list[Tensor],
    device: torch.device | str | None = None,
) -> tuple[SparseTensor, Tensor]:
    """Stack samples into a stride-1 SparseTensor, merging duplicate voxels within a sample.

    grid_coords[i] is (N_i, 3) integer voxel coordinates of sample i, feats[i] its (N_i, C)
    features. Rows falling on the same voxel of the same sample become one voxel whose
    features are their mean. Returns (tensor, inverse): inverse (sum N_i,) int64 maps every
    input row to its voxel row, so point-level outputs are `out.feats[inverse]`. Voxels are
    sorted by (batch, x, y, z).
    """
    if len(grid_coords) != len(feats):
        raise ValueError(f"got {len(grid_coords)} coordinate arrays but {len(feats)} feature tensors")
    if not grid_coords:
        raise ValueError("sparse_collate needs at least one sample")
    device = torch.device(device) if device is not None else feats[0].device
    rows = []
    for i, (grid, feat) in enumerate(zip(grid_coords, feats)):
        grid = torch.as_tensor(grid)
        if grid.dim() != 2 or grid.shape[1] != 3 or grid.shape[0] != feat.shape[0]:
            raise ValueError(
                f"sample {i}: coordinates must be (N, 3) with N = {feat.shape[0]} feature rows, "
                f"got shape {tuple(grid.shape)}"
            )
        if grid.dtype.is_floating_point:
            raise ValueError(f"sample {i}: grid coordinates must be integers, got {grid.dtype}")
        grid = grid.to(device=device, dtype=torch.int64)
        batch = torch.full((grid.shape[0], 1), i, dtype=torch.int64, device=device)
        rows.append(torch.cat([batch, grid], 1))
    coords = torch.cat(rows)
    all_feats = torch.cat([f.to(device) for f in feats])
    lo = coords.min(0).values
    span = (coords.max(0).values - lo + 1).tolist()
    if span[0] * span[1] * span[2] * span[3] >= 2**62:
        raise ValueError(f"voxel coordinate range too large (spans {span})")
    g = coords - lo
    keys = ((g[:, 0] * span[1] + g[:, 1]) * span[2] + g[:, 2]) * span[3] + g[:, 3]
    unique_keys, inverse = torch.unique(keys, return_inverse=True)
    num_voxels = unique_keys.numel()
    first_row = torch.full((num_voxels,), coords.shape[0], dtype=torch.int64, device=device)
    first_row.scatter_reduce_(0, inverse, torch.arange(coords.shape[0], device=device), "amin")
    voxel_coords = coords[first_row].to(torch.int32)
    count = torch.bincount(inverse, minlength=num_voxels).to(all_feats.dtype)
    voxel_feats = all_feats.new_zeros(num_voxels, all_feats.shape[1]).index_add_(0, inverse, all_feats)
    voxel_feats /= count[:, None]
    context = CoordinateContext()
    context.set_batch_size(len(grid_coords))
    return SparseTensor(voxel_feats, voxel_coords, 1, context=context), inverse
