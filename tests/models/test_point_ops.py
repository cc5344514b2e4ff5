"""Point ops against brute-force references: FPS (numpy loop), kNN (scipy cKDTree), Chamfer
(hand-made sets), and chunked == unchunked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from pptkit.models.point_ops import (
    _BlockedArgmax,
    _DirectArgmax,
    chamfer_distance,
    farthest_point_sample,
    group_patches,
    knn,
    nearest_neighbour,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def brute_force_fps(cloud: np.ndarray, k: int) -> np.ndarray:
    """Textbook FPS from index 0: squared distances as (dx² + dy²) + dz² in the cloud's dtype,
    np.argmax (first index) among equal maxima."""
    min_dist = np.full(len(cloud), np.inf, dtype=cloud.dtype)
    picked = [0]
    for _ in range(k - 1):
        diff = cloud - cloud[picked[-1]]
        dist = (diff[:, 0] * diff[:, 0] + diff[:, 1] * diff[:, 1]) + diff[:, 2] * diff[:, 2]
        min_dist = np.minimum(min_dist, dist)
        picked.append(int(np.argmax(min_dist)))
    return np.array(picked)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_points", [1024, 1000, 77])  # whole, partial and a single argmax block
def test_fps_matches_brute_force(dtype, num_points):
    points = torch.rand(3, num_points, 3, generator=torch.Generator().manual_seed(num_points), dtype=dtype)
    got = farthest_point_sample(points, 40)
    assert got.dtype == torch.int64 and got.shape == (3, 40)
    for b in range(3):
        np.testing.assert_array_equal(got[b].numpy(), brute_force_fps(points[b].numpy(), 40))


def test_fps_ties_resolve_to_the_first_index():
    # Integer grid points: squared distances are exact, so equal ones are common.
    grid = torch.stack(torch.meshgrid(*[torch.arange(6.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    shuffled = grid[torch.randperm(len(grid), generator=torch.Generator().manual_seed(0))]
    points = torch.stack([grid, shuffled, grid.flip(0)])
    got = farthest_point_sample(points, 60)
    for b in range(3):
        np.testing.assert_array_equal(got[b].numpy(), brute_force_fps(points[b].numpy(), 60))


def test_fps_batched_equals_per_sample():
    points = torch.randn(5, 300, 3, generator=torch.Generator().manual_seed(1))
    batched = farthest_point_sample(points, 32)
    for b in range(5):
        assert torch.equal(batched[b], farthest_point_sample(points[b:b + 1], 32)[0])


def test_fps_repeats_indices_when_points_run_out():
    points = torch.zeros(2, 10, 3)
    points[:, 3] = 1.0  # two distinct positions
    got = farthest_point_sample(points, 4)
    assert got.tolist() == [[0, 3, 0, 0], [0, 3, 0, 0]]  # then every distance is 0: index 0


def test_fps_half_precision_is_searched_in_float32():
    points = torch.rand(2, 200, 3, generator=torch.Generator().manual_seed(2)).half()
    assert torch.equal(farthest_point_sample(points, 16), farthest_point_sample(points.float(), 16))


def test_fps_rejects_bad_input():
    with pytest.raises(ValueError, match="k must lie in 1..10"):
        farthest_point_sample(torch.rand(1, 10, 3), 11)
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        farthest_point_sample(torch.rand(10, 3), 2)
    with pytest.raises(ValueError, match="NaN or infinite"):
        farthest_point_sample(torch.tensor([[[0.0, 0, 0], [float("nan"), 0, 0]]]), 2)


def test_blocked_argmax_equals_direct_argmax_with_ties():
    # The CPU path (blocked) and the CUDA path (direct) must pick the same first maximum.
    gen = torch.Generator().manual_seed(3)
    values = torch.randint(0, 4, (16, 192), generator=gen).float()  # many equal maxima
    values[:, 150:] = -1.0  # padding
    blocked, direct = torch.empty(16, dtype=torch.int64), torch.empty(16, dtype=torch.int64)
    _BlockedArgmax(values)(out=blocked)
    _DirectArgmax(values)(out=direct)
    assert torch.equal(blocked, direct)
    assert torch.equal(direct - torch.arange(16) * 192, values.argmax(dim=1))


@pytest.mark.parametrize("device", DEVICES)
def test_fps_device_agrees_with_reference(device):
    points = torch.rand(4, 500, 3, generator=torch.Generator().manual_seed(4))
    got = farthest_point_sample(points.to(device), 24).cpu()
    for b in range(4):
        np.testing.assert_array_equal(got[b].numpy(), brute_force_fps(points[b].numpy(), 24))


def _tie_free(dist: np.ndarray, tol: float) -> np.ndarray:
    """For k+1 sorted distances: mask (.., k) of the first k ranks whose distance differs from
    both neighbouring ranks' (rank k+1 included, so the cut at k is tie-free too)."""
    gaps = np.diff(dist, axis=-1) > tol  # gap after rank i, i < k
    return gaps & np.concatenate([np.ones_like(gaps[..., :1]), gaps[..., :-1]], -1)


@pytest.mark.parametrize("device", DEVICES)
def test_knn_matches_ckdtree(device):
    gen = torch.Generator().manual_seed(5)
    points = torch.rand(3, 400, 3, generator=gen, dtype=torch.float64)
    query = torch.rand(3, 50, 3, generator=gen, dtype=torch.float64)
    dist2, idx = knn(query.to(device), points.to(device), 12)
    assert dist2.shape == idx.shape == (3, 50, 12) and idx.dtype == torch.int64
    dist2, idx = dist2.cpu().numpy(), idx.cpu().numpy()
    for b in range(3):
        ref_dist, ref_idx = cKDTree(points[b].numpy()).query(query[b].numpy(), 13)
        np.testing.assert_allclose(dist2[b], ref_dist[:, :12] ** 2, rtol=1e-12, atol=1e-15)
        free = _tie_free(ref_dist, 1e-12)
        assert free.mean() > 0.99  # random points: ties are rare, so the check has teeth
        np.testing.assert_array_equal(idx[b][free], ref_idx[:, :12][free])
    assert np.all(np.diff(dist2, axis=-1) >= 0)


def test_knn_float32_distances_match_ckdtree():
    gen = torch.Generator().manual_seed(6)
    points, query = torch.rand(2, 300, 3, generator=gen), torch.rand(2, 40, 3, generator=gen)
    dist2, _ = knn(query, points, 8)
    for b in range(2):
        ref_dist, _ = cKDTree(points[b].numpy()).query(query[b].numpy(), 8)
        np.testing.assert_allclose(dist2[b].numpy(), ref_dist ** 2, rtol=1e-5, atol=1e-7)


def test_knn_query_point_finds_itself_first():
    points = torch.rand(2, 100, 3, generator=torch.Generator().manual_seed(7))
    dist2, idx = knn(points[:, :10], points, 4)
    assert torch.equal(idx[..., 0], torch.arange(10).expand(2, 10))
    assert torch.all(dist2[..., 0] == 0)


@pytest.mark.parametrize("max_pairs", [1, 250, 999, 1_000_000])
def test_knn_chunking_is_exact(max_pairs):
    gen = torch.Generator().manual_seed(8)
    points, query = torch.rand(4, 250, 3, generator=gen), torch.rand(4, 30, 3, generator=gen)
    whole = knn(query, points, 10, max_pairs=10**9)
    chunked = knn(query, points, 10, max_pairs=max_pairs)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


def test_knn_rejects_bad_input():
    with pytest.raises(ValueError, match="k must lie in 1..5"):
        knn(torch.rand(1, 2, 3), torch.rand(1, 5, 3), 6)
    with pytest.raises(ValueError, match="batch size"):
        knn(torch.rand(2, 2, 3), torch.rand(1, 5, 3), 1)


def test_chamfer_hand_made_values():
    a = torch.tensor([[[0.0, 0, 0], [1, 0, 0]], [[0, 0, 0], [0, 0, 0]]])
    b = torch.tensor([[[0.0, 1, 0]], [[0, 0, 2]]])
    # cloud 0: a->b squared 1 and 2, b->a 1; cloud 1: a->b 4 and 4, b->a 4.
    l2 = chamfer_distance(a, b, "l2", reduction="none")
    torch.testing.assert_close(l2, torch.tensor([1.5 + 1.0, 4.0 + 4.0]))
    l1 = chamfer_distance(a, b, "l1", reduction="none")
    torch.testing.assert_close(l1, torch.tensor([((1 + 2 ** 0.5) / 2 + 1) / 2, (2.0 + 2.0) / 2]))
    torch.testing.assert_close(chamfer_distance(a, b, "l2"), l2.mean())
    assert chamfer_distance(a, a, "l1").item() == 0.0


def test_chamfer_mean_matches_point_mae_flattened_definition():
    # The reference averages dist1 over all B*N points and dist2 over all B*M points.
    gen = torch.Generator().manual_seed(9)
    a, b = torch.rand(3, 20, 3, generator=gen, dtype=torch.float64), torch.rand(3, 15, 3, generator=gen, dtype=torch.float64)
    pairwise = torch.cdist(a, b) ** 2
    reference = pairwise.min(2).values.mean() + pairwise.min(1).values.mean()
    torch.testing.assert_close(chamfer_distance(a, b, "l2"), reference)
    reference_l1 = (pairwise.min(2).values.sqrt().mean() + pairwise.min(1).values.sqrt().mean()) / 2
    torch.testing.assert_close(chamfer_distance(a, b, "l1"), reference_l1)


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_chamfer_gradients(kind):
    gen = torch.Generator().manual_seed(10)
    a = torch.rand(2, 6, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.rand(2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: chamfer_distance(x, y, kind), (a, b))


def test_chamfer_l1_gradient_is_finite_at_coincident_points():
    a = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]], requires_grad=True)
    b = torch.tensor([[[0.0, 0, 0]]])
    chamfer_distance(a, b, "l1").backward()
    assert torch.isfinite(a.grad).all()
    torch.testing.assert_close(a.grad[0, 0], torch.zeros(3))  # coincident: zero subgradient


@pytest.mark.parametrize("max_pairs", [1, 37, 1_000_000])
def test_nearest_neighbour_chunking_is_exact_and_keeps_first_tie(max_pairs):
    gen = torch.Generator().manual_seed(11)
    a, b = torch.rand(3, 40, 3, generator=gen), torch.rand(3, 25, 3, generator=gen)
    a[:, 35] = a[:, 2]  # a duplicate far apart in a: b_to_a must keep index 2
    whole = nearest_neighbour(a, b, max_pairs=10**9)
    chunked = nearest_neighbour(a, b, max_pairs=max_pairs)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])
    assert not (chunked[1] == 35).any()
    brute = torch.cdist(a.double(), b.double())
    assert torch.equal(chunked[0], brute.argmin(2)) and torch.equal(chunked[1], brute.argmin(1))
    assert torch.equal(chamfer_distance(a, b, "l2", max_pairs=max_pairs),
                       chamfer_distance(a, b, "l2", max_pairs=10**9))


def test_chamfer_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        chamfer_distance(torch.rand(1, 2, 3), torch.rand(1, 2, 3), "emd")
    with pytest.raises(ValueError, match="reduction"):
        chamfer_distance(torch.rand(1, 2, 3), torch.rand(1, 2, 3), reduction="sum")


def test_group_patches_are_the_nearest_points_recentred():
    points = torch.rand(2, 256, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    patches, centres = group_patches(points, num_groups=16, group_size=8)
    assert patches.shape == (2, 16, 8, 3) and centres.shape == (2, 16, 3)
    for b in range(2):
        fps = farthest_point_sample(points[b:b + 1], 16)[0]
        assert torch.equal(centres[b], points[b, fps])
        _, ref_idx = cKDTree(points[b].numpy()).query(centres[b].numpy(), 8)
        torch.testing.assert_close(patches[b] + centres[b, :, None], points[b, torch.from_numpy(ref_idx)])
    assert torch.all(patches[:, :, 0] == 0)  # each centre is its own nearest point


def test_group_patches_is_differentiable_in_points():
    points = torch.rand(1, 64, 3, generator=torch.Generator().manual_seed(13), requires_grad=True)
    patches, centres = group_patches(points, 4, 8)
    (patches.sum() + centres.sum()).backward()
    assert points.grad is not None and points.grad.abs().sum() > 0
