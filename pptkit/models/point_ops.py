"""Point-cloud primitives of the point-patch Transformer, batched and in plain PyTorch.

These replace the CUDA extensions that Point-MAE / ACT need (pointnet2_ops' furthest point
sampling, KNN_CUDA, the chamfer kernel): the same code runs on CPU and CUDA.

- `farthest_point_sample`: iterative FPS from index 0, exact (same picks as a brute-force
  loop: squared distances summed as ``(dx² + dy²) + dz²`` in the input precision, the first
  index among equal maxima).
- `knn`: the k nearest points of every query, ascending.
- `chamfer_distance`: Chamfer-L1 / Chamfer-L2 with Point-MAE's conventions.
- `group_patches`: FPS centres, then the k nearest points of each centre, recentred.

Pairwise distances are never materialised for whole batches: `knn` and `chamfer_distance`
work through chunks of at most ``max_pairs`` (query, point) pairs (or one query row when a
single row is longer), so memory stays bounded for large point counts. Neighbour searches run
without autograd; differentiable quantities are recomputed from gathered coordinates.

Patch defaults of Point-MAE / ACT: 64 groups of 32 points for 1,024-point objects, 128 groups
of 32 for 2,048 points.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

DEFAULT_MAX_PAIRS = 1 << 24
_ARGMAX_BLOCK = 64


def _check_cloud(name: str, points: Tensor) -> None:
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (B, N, 3), got {tuple(points.shape)}")
    if not points.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor, got {points.dtype}")


def _search_dtype(points: Tensor) -> Tensor:
    """Half-precision coordinates are searched in float32 (their squared distances would round)."""
    points = points.detach()
    return points.float() if points.dtype in (torch.float16, torch.bfloat16) else points


def farthest_point_sample(points: Tensor, k: int) -> Tensor:
    """Indices (B, k) int64 of k points per cloud chosen by farthest point sampling.

    Starts at index 0 of every cloud (as pointnet2_ops does), then repeatedly takes the point
    whose squared distance to the chosen set is largest; among equal distances the lowest index
    wins. A cloud with fewer than k distinct points yields repeated indices. All clouds of the
    batch advance together: one vectorised update of the running minimum distance per step.
    """
    _check_cloud("points", points)
    batch, num_points, _ = points.shape
    if not 1 <= k <= num_points:
        raise ValueError(f"k must lie in 1..{num_points} (the number of points), got {k}")
    if not torch.isfinite(points).all():
        raise ValueError("points hold NaN or infinite coordinates")
    device = points.device
    with torch.no_grad():
        work = _search_dtype(points)
        x, y, z = work.permute(2, 0, 1).contiguous()
        # The running minimum lives in a buffer padded to whole blocks of _ARGMAX_BLOCK points:
        # on CPU the argmax is taken per block first (torch's CPU argmax over long rows is slow).
        # Padding holds -1, below every real squared distance, so it is never chosen.
        width = -(-num_points // _ARGMAX_BLOCK) * _ARGMAX_BLOCK
        padded = torch.full((batch, width), -1.0, dtype=work.dtype, device=device)
        min_dist = padded[:, :num_points]
        min_dist.fill_(float("inf"))
        # Coordinates in the same padded layout, so one flat index addresses both.
        flat = torch.zeros((batch, width, 3), dtype=work.dtype, device=device)
        flat[:, :num_points] = work
        flat = flat.view(batch * width, 3)
        row_start = torch.arange(batch, device=device) * width

        centre = torch.empty((batch, 3), dtype=work.dtype, device=device)
        cx, cy, cz = centre.t().unsqueeze(-1)  # views (B, 1) refilled every step
        dist = torch.empty((batch, num_points), dtype=work.dtype, device=device)
        term = torch.empty_like(dist)
        argmax = _BlockedArgmax(padded) if device.type == "cpu" else _DirectArgmax(padded)
        chosen = torch.empty((k, batch), dtype=torch.int64, device=device)  # flat indices
        chosen[0] = row_start
        for step in range(1, k):
            torch.index_select(flat, 0, chosen[step - 1], out=centre)
            torch.sub(x, cx, out=dist)
            dist.mul_(dist)
            torch.sub(y, cy, out=term)
            term.mul_(term)
            dist.add_(term)
            torch.sub(z, cz, out=term)
            term.mul_(term)
            dist.add_(term)
            torch.minimum(min_dist, dist, out=min_dist)
            argmax(out=chosen[step])
        return (chosen - row_start).t().contiguous()


class _DirectArgmax:
    """Flat index (row start + column) of each row's first maximum, with torch.argmax."""

    def __init__(self, padded: Tensor):
        self.padded = padded
        self.row_start = torch.arange(padded.shape[0], device=padded.device) * padded.shape[1]
        self.column = torch.empty(padded.shape[0], dtype=torch.int64, device=padded.device)

    def __call__(self, out: Tensor) -> None:
        torch.argmax(self.padded, dim=1, out=self.column)
        torch.add(self.row_start, self.column, out=out)


class _BlockedArgmax:
    """The same as `_DirectArgmax` in two levels: the maximum of every block of
    _ARGMAX_BLOCK columns, the first block holding the row maximum, then the first maximum
    inside that block. The first block with the maximum contains the row's first maximum, so
    ties resolve as in one argmax."""

    def __init__(self, padded: Tensor):
        rows, width = padded.shape
        self.num_blocks = width // _ARGMAX_BLOCK
        self.blocks3 = padded.view(rows, self.num_blocks, _ARGMAX_BLOCK)
        self.blocks = padded.view(rows * self.num_blocks, _ARGMAX_BLOCK)
        device = padded.device
        self.block_max = torch.empty((rows, self.num_blocks), dtype=padded.dtype, device=device)
        self.block_index = torch.empty(rows, dtype=torch.int64, device=device)
        self.block_row_start = torch.arange(rows, device=device) * self.num_blocks
        self.block_row = torch.empty(rows, dtype=torch.int64, device=device)
        self.block_values = torch.empty((rows, _ARGMAX_BLOCK), dtype=padded.dtype, device=device)
        self.within = torch.empty(rows, dtype=torch.int64, device=device)

    def __call__(self, out: Tensor) -> None:
        torch.amax(self.blocks3, dim=2, out=self.block_max)
        torch.argmax(self.block_max, dim=1, out=self.block_index)
        torch.add(self.block_row_start, self.block_index, out=self.block_row)
        torch.index_select(self.blocks, 0, self.block_row, out=self.block_values)
        torch.argmax(self.block_values, dim=1, out=self.within)
        # block_row * block size is the flat index of the block's first column.
        torch.add(self.within, self.block_row, alpha=_ARGMAX_BLOCK, out=out)


def _rows_per_chunk(num_points: int, max_pairs: int) -> int:
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    return max(1, max_pairs // num_points)


def _chunks(batch: int, rows: int, rows_per_chunk: int):
    """(batch slice, row slice) pairs covering a (batch, rows) grid, each at most rows_per_chunk
    rows in total: whole clouds grouped while they fit, otherwise one cloud in row slices."""
    if rows == 0:
        return
    if rows <= rows_per_chunk:
        step = rows_per_chunk // rows
        for b0 in range(0, batch, step):
            yield slice(b0, min(b0 + step, batch)), slice(0, rows)
    else:
        for b in range(batch):
            for r0 in range(0, rows, rows_per_chunk):
                yield slice(b, b + 1), slice(r0, min(r0 + rows_per_chunk, rows))


def _exact_euclidean(a: Tensor, b: Tensor) -> Tensor:
    """(B, n, m) Euclidean distances, each computed from coordinate differences (no
    |a|² + |b|² − 2ab cancellation, so near neighbours are ranked correctly)."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _squared_norm(diff: Tensor) -> Tensor:
    """Σ diff² over the last axis (size 3), summed in the fixed order (x² + y²) + z²."""
    sq = diff * diff
    return sq[..., 0] + sq[..., 1] + sq[..., 2]


def _gather_points(points: Tensor, index: Tensor) -> Tensor:
    """points (B, N, C) at index (B, ...) -> (B, ..., C); differentiable in points."""
    batch, num_points, channels = points.shape
    offsets = (torch.arange(batch, device=points.device) * num_points).view(-1, *[1] * (index.ndim - 1))
    return points.reshape(batch * num_points, channels)[(index + offsets).reshape(-1)].view(
        *index.shape, channels)


def knn(query: Tensor, points: Tensor, k: int,
        max_pairs: int = DEFAULT_MAX_PAIRS) -> tuple[Tensor, Tensor]:
    """The k nearest points of every query point, per cloud.

    query (B, M, 3), points (B, N, 3) -> (dist2 (B, M, k), idx (B, M, k) int64), sorted by
    ascending squared distance. A query that is itself one of the points finds itself first
    (distance 0). Distances are exact (from coordinate differences) and carry no gradient:
    gather coordinates with idx where one is needed. At most ``max_pairs`` pairwise distances
    exist at a time (at least one query row's worth).
    """
    _check_cloud("query", query)
    _check_cloud("points", points)
    batch, num_query, _ = query.shape
    if points.shape[0] != batch:
        raise ValueError(f"query and points must share the batch size, got {batch} and {points.shape[0]}")
    num_points = points.shape[1]
    if not 1 <= k <= num_points:
        raise ValueError(f"k must lie in 1..{num_points} (the number of points), got {k}")
    rows_per_chunk = _rows_per_chunk(num_points, max_pairs)
    with torch.no_grad():
        q, p = _search_dtype(query), _search_dtype(points)
        dist2 = torch.empty((batch, num_query, k), dtype=q.dtype, device=q.device)
        idx = torch.empty((batch, num_query, k), dtype=torch.int64, device=q.device)
        for bs, rs in _chunks(batch, num_query, rows_per_chunk):
            qc, pc = q[bs, rs], p[bs]
            cand = _exact_euclidean(qc, pc).topk(k, dim=-1, largest=False).indices
            # Exact squared distances of the k found, re-sorted (stable) by them.
            exact = _squared_norm(_gather_points(pc, cand) - qc.unsqueeze(2))
            exact, order = exact.sort(dim=-1, stable=True)
            dist2[bs, rs] = exact
            idx[bs, rs] = cand.gather(-1, order)
    return dist2, idx


def nearest_neighbour(a: Tensor, b: Tensor,
                      max_pairs: int = DEFAULT_MAX_PAIRS) -> tuple[Tensor, Tensor]:
    """Index of the nearest point of b for every point of a, and of a for every point of b:
    (a_to_b (B, N) int64, b_to_a (B, M) int64); the lowest index among equally near points.
    One pass over the pairwise distances serves both directions."""
    _check_cloud("a", a)
    _check_cloud("b", b)
    batch, num_a, _ = a.shape
    if b.shape[0] != batch:
        raise ValueError(f"a and b must share the batch size, got {batch} and {b.shape[0]}")
    num_b = b.shape[1]
    if num_a == 0 or num_b == 0:
        raise ValueError(f"a and b must hold at least one point each, got {num_a} and {num_b}")
    rows_per_chunk = _rows_per_chunk(num_b, max_pairs)
    with torch.no_grad():
        a_work, b_work = _search_dtype(a), _search_dtype(b)
        a_to_b = torch.empty((batch, num_a), dtype=torch.int64, device=a.device)
        best = torch.full((batch, num_b), float("inf"), dtype=a_work.dtype, device=a.device)
        b_to_a = torch.zeros((batch, num_b), dtype=torch.int64, device=a.device)
        for bs, rs in _chunks(batch, num_a, rows_per_chunk):
            dist = _exact_euclidean(a_work[bs, rs], b_work[bs])
            a_to_b[bs, rs] = dist.argmin(dim=2)
            chunk_best, chunk_index = dist.min(dim=1)
            # Row chunks arrive in order, so a strictly smaller distance is needed to replace
            # an earlier (lower) index: ties keep the first, as one pass would.
            better = chunk_best < best[bs]
            best[bs] = torch.where(better, chunk_best, best[bs])
            b_to_a[bs] = torch.where(better, chunk_index + rs.start, b_to_a[bs])
    return a_to_b, b_to_a


def chamfer_distance(a: Tensor, b: Tensor, kind: Literal["l1", "l2"] = "l2",
                     reduction: Literal["mean", "none"] = "mean",
                     max_pairs: int = DEFAULT_MAX_PAIRS) -> Tensor:
    """Chamfer distance between clouds a (B, N, 3) and b (B, M, 3), Point-MAE's definitions:

    - ``"l2"`` (ChamferDistanceL2): mean over a of the squared distance to the nearest point of
      b, plus the same from b to a;
    - ``"l1"`` (ChamferDistanceL1): (mean over a of the distance to the nearest point of b +
      the same from b to a) / 2.

    ``reduction="none"`` returns the per-cloud values (B,); ``"mean"`` their mean, which is
    the reference's value (it averages over all B·N and B·M points, the same for equal sizes).
    Differentiable in a and b; the L1 gradient is 0 (not NaN, as in the reference's
    sqrt of the squared distance) where two points coincide.
    """
    if kind not in ("l1", "l2"):
        raise ValueError(f"kind must be 'l1' or 'l2', got {kind!r}")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    a_to_b, b_to_a = nearest_neighbour(a, b, max_pairs)
    diff_ab = a - _gather_points(b, a_to_b)
    diff_ba = b - _gather_points(a, b_to_a)
    if kind == "l2":
        per_cloud = _squared_norm(diff_ab).mean(dim=1) + _squared_norm(diff_ba).mean(dim=1)
    else:
        per_cloud = (torch.linalg.vector_norm(diff_ab, dim=-1).mean(dim=1)
                     + torch.linalg.vector_norm(diff_ba, dim=-1).mean(dim=1)) / 2
    return per_cloud.mean() if reduction == "mean" else per_cloud


def group_patches(points: Tensor, num_groups: int, group_size: int,
                  max_pairs: int = DEFAULT_MAX_PAIRS) -> tuple[Tensor, Tensor]:
    """Split clouds into local patches: FPS picks ``num_groups`` centres, each patch is the
    ``group_size`` points nearest its centre (the centre itself first), recentred on it.

    points (B, N, 3) -> (patches (B, G, K, 3), centres (B, G, 3)); differentiable in points.
    Point-MAE / ACT use G=64, K=32 for 1,024 points and G=128, K=32 for 2,048.
    """
    _check_cloud("points", points)
    if group_size > points.shape[1]:
        raise ValueError(f"group_size {group_size} exceeds the {points.shape[1]} points per cloud")
    centre_index = farthest_point_sample(points, num_groups)
    centres = _gather_points(points, centre_index)
    _, neighbours = knn(centres, points, group_size, max_pairs)
    patches = _gather_points(points, neighbours) - centres.unsqueeze(2)
    return patches, centres
