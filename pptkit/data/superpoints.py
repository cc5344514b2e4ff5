"""Superpoints: a geometric over-segmentation of a scene by Felzenszwalb-Huttenlocher graph merging.

The scene is voxelized at `grid_size`; voxels are the graph's nodes and every pair of occupied
voxels among each other's 26 neighbours is an edge, weighted by how much their surfaces
differ:

    w = (1 - n_i . n_j) + colour_weight * |c_i - c_j| / (255 * sqrt(3))

(mean unit normals n, mean RGB colours c). Edges are merged in increasing weight while the
weight stays below both components' internal difference plus `k / size` (Felzenszwalb and
Huttenlocher's criterion, the one ScanNet's mesh segmentator uses with normal-only weights),
then components smaller than `min_size` voxels are merged into a neighbour along their
lightest edge. Regions with smooth normals and uniform colour (a wall, a table top) become
one superpoint, creases and colour edges separate them. Ids are 0..S-1, in order of each
superpoint's first voxel.
"""

from __future__ import annotations

import numpy as np

from pptkit.data.voxelize import voxel_mean, voxelize

# Half of the 26-neighbourhood: each undirected edge is found once.
_HALF_NEIGHBOURHOOD = np.array([(dx, dy, dz) for dx in (-1, 0, 1) for dy in (-1, 0, 1) for dz in (-1, 0, 1)
                                if (dx, dy, dz) > (0, 0, 0)], dtype=np.int64)


def voxel_edges(grid_coord: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(i, j) index pairs of voxels that are 26-neighbours, each pair once (i != j)."""
    grid = np.asarray(grid_coord, dtype=np.int64)
    low = grid.min(axis=0) - 1
    span = grid.max(axis=0) - low + 2
    g = grid - low
    keys = (g[:, 0] * span[1] + g[:, 1]) * span[2] + g[:, 2]
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    sources, targets = [], []
    for offset in _HALF_NEIGHBOURHOOD:
        shifted = (g + offset)
        other = (shifted[:, 0] * span[1] + shifted[:, 1]) * span[2] + shifted[:, 2]
        at = np.searchsorted(sorted_keys, other)
        at = np.minimum(at, len(sorted_keys) - 1)
        hit = sorted_keys[at] == other
        sources.append(np.flatnonzero(hit))
        targets.append(order[at[hit]])
    return np.concatenate(sources), np.concatenate(targets)


def felzenszwalb(num_nodes: int, i: np.ndarray, j: np.ndarray, weight: np.ndarray, k: float,
                 min_size: int) -> np.ndarray:
    """Component label (0..S-1, ordered by first node) of every node of a weighted graph."""
    parent = list(range(num_nodes))
    size = [1] * num_nodes
    internal = [0.0] * num_nodes

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]  # path halving
            a = parent[a]
        return a

    order = np.argsort(weight, kind="stable")
    edges_i, edges_j, edges_w = i[order].tolist(), j[order].tolist(), weight[order].tolist()
    for a, b, w in zip(edges_i, edges_j, edges_w):
        ra, rb = find(a), find(b)
        if ra == rb:
            continue
        if w <= min(internal[ra] + k / size[ra], internal[rb] + k / size[rb]):
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
            internal[ra] = w  # edges come in increasing weight: w is the new maximum
    for a, b in zip(edges_i, edges_j):
        ra, rb = find(a), find(b)
        if ra != rb and (size[ra] < min_size or size[rb] < min_size):
            if size[ra] < size[rb]:
                ra, rb = rb, ra
            parent[rb] = ra
            size[ra] += size[rb]
    roots = np.fromiter((find(a) for a in range(num_nodes)), dtype=np.int64, count=num_nodes)
    _, first, labels = np.unique(roots, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[labels].astype(np.int32)


def superpoints(coord: np.ndarray, normal: np.ndarray, color: np.ndarray, grid_size: float,
                k: float = 0.05, colour_weight: float = 1.0, min_size: int = 8) -> np.ndarray:
    """Superpoint id (N,) int32 of every point (rows of a scene), computed at `grid_size` voxels."""
    vox = voxelize(coord, grid_size)
    mean_normal = voxel_mean(vox, np.asarray(normal, dtype=np.float32))
    length = np.linalg.norm(mean_normal, axis=1, keepdims=True)
    mean_normal = np.divide(mean_normal, length, out=np.zeros_like(mean_normal), where=length > 1e-12)
    mean_color = voxel_mean(vox, np.asarray(color, dtype=np.float32))
    i, j = voxel_edges(vox.grid_coord)
    if len(i) == 0:
        return np.arange(vox.num_voxels, dtype=np.int32)[vox.inverse]
    normal_term = 1.0 - np.einsum("ij,ij->i", mean_normal[i], mean_normal[j])
    colour_term = np.linalg.norm(mean_color[i] - mean_color[j], axis=1) / (255.0 * np.sqrt(3.0))
    weight = np.clip(normal_term, 0.0, 2.0) + colour_weight * colour_term
    labels = felzenszwalb(vox.num_voxels, i, j, weight, k, min_size)
    return labels[vox.inverse]
