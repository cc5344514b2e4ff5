"""Sparse UNets: layout (parameter counts), output shapes, condition plumbing, and overfitting one room."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from pptkit.models import MinkUNet14, MinkUNet18, MinkUNet34, SparseUNet
from pptkit.models.sparse_unet import UNetOutput, to_points
from pptkit.sparse import BatchNorm, SparseTensor, available_backends, sparse_collate


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: on a shared, loaded CPU two threads make these small convs ~10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def random_cloud(n_points: int, n_channels: int, seed: int, extent: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer grid coordinates with duplicates (several points per voxel) and random features."""
    gen = torch.Generator().manual_seed(seed)
    coords = torch.randint(0, extent, (n_points, 3), generator=gen)
    return coords, torch.randn(n_points, n_channels, generator=gen)


def test_spunet_parameter_count_matches_pointcept() -> None:
    model = SparseUNet(in_channels=6, num_classes=20)
    count = n_params(model)
    print(f"\nSparseUNet(6 -> 20), SpUNet-v1m1 layout: {count:,} parameters ({count / 1e6:.2f}M)")
    assert abs(count - 39.2e6) / 39.2e6 < 0.01
    assert model.out_channels == 96


# Counted by hand from MinkowskiEngine's MinkUNet layout (stride-2 convs keep their channels, each
# stage's first BasicBlock projects); MinkUNet34 is the often-quoted ~37.9M.
@pytest.mark.parametrize(("cls", "expected_m"), [(MinkUNet14, 11.58), (MinkUNet18, 21.70), (MinkUNet34, 37.86)])
def test_minkunet_builds_and_runs(cls: type[SparseUNet], expected_m: float) -> None:
    torch.manual_seed(0)
    model = cls(in_channels=3, num_classes=20)
    count = n_params(model)
    print(f"\n{cls.__name__}(3 -> 20): {count:,} parameters")
    assert abs(count / 1e6 - expected_m) < 0.01
    coords, feats = random_cloud(300, 3, seed=1)
    x, _ = sparse_collate([coords], [feats])
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.logits is not None and out.logits.shape == (x.feats.shape[0], 20)
    assert torch.isfinite(out.logits).all()


def test_output_shapes_and_point_logits() -> None:
    torch.manual_seed(0)
    model = SparseUNet(4, 7, base_channels=8, channels=(8, 16, 16, 16, 16, 16, 8, 8), layers=(1,) * 8)
    clouds = [random_cloud(200, 4, seed=s) for s in (2, 3)]
    x, inverse = sparse_collate([c for c, _ in clouds], [f for _, f in clouds])
    out = model(x)
    assert isinstance(out, UNetOutput)
    n_voxels = x.feats.shape[0]
    assert out.logits.shape == (n_voxels, 7)
    assert out.feats.feats.shape == (n_voxels, model.out_channels)
    assert torch.equal(out.feats.coords, x.coords)
    point_logits = to_points(out.logits, inverse)
    assert point_logits.shape == (400, 7)
    assert torch.equal(point_logits[0], out.logits[inverse[0]])

    features_only = SparseUNet(4, 0, base_channels=8, channels=(8, 16, 16, 16, 16, 16, 8, 8), layers=(1,) * 8)
    out = features_only(x)
    assert out.logits is None and out.feats.feats.shape == (n_voxels, 8)
    assert not any(isinstance(m, nn.Linear) for m in features_only.modules())


@pytest.mark.minkowski
def test_minkowski_backend_gives_the_same_logits() -> None:
    if "minkowski" not in available_backends():
        pytest.skip("MinkowskiEngine is not installed (make minkowski)")
    torch.manual_seed(0)
    coords, feats = random_cloud(300, 3, seed=5)
    reference = MinkUNet14(3, 5).eval()
    minkowski = MinkUNet14(3, 5, backend="minkowski").eval()
    minkowski.load_state_dict(reference.state_dict())
    with torch.no_grad():
        expected = reference(sparse_collate([coords], [feats])[0]).logits
        actual = minkowski(sparse_collate([coords], [feats])[0]).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


class RecordingNorm(nn.Module):
    """BatchNorm that records the condition of every tensor it normalizes."""

    def __init__(self, num_features: int, seen: list[object]) -> None:
        super().__init__()
        self.norm = BatchNorm(num_features)
        self.seen = seen

    def forward(self, x: SparseTensor) -> SparseTensor:
        self.seen.append(x.condition)
        return self.norm(x)


def test_condition_reaches_every_norm_layer() -> None:
    seen: list[object] = []
    model = SparseUNet(3, 5, base_channels=8, channels=(8, 8, 16, 16, 16, 8, 8, 8), layers=(1, 2, 1, 1, 1, 1, 2, 1),
                       norm_layer=partial(RecordingNorm, seen=seen))
    n_norms = sum(isinstance(m, RecordingNorm) for m in model.modules())
    coords, feats = random_cloud(150, 3, seed=4)
    x, _ = sparse_collate([coords], [feats])
    prompt = object()
    out = model(x.with_condition(prompt))
    assert n_norms > 20 and len(seen) == n_norms
    assert all(c is prompt for c in seen)
    assert out.feats.condition is prompt


def synthetic_room(rng: np.random.Generator, voxel: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small labelled room on a voxel grid: floor (0), walls (1), two boxes (2, 3) and a slab (4).

    Returns per-point grid coords (N,3) (several points share a voxel), features (N,6) = jittered
    class colour / 255 and normalized xyz, and labels (N,).
    """
    size, height = 2.0, 1.2
    step = voxel / 2
    u = np.arange(0, size, step)
    h = np.arange(0, height, step)
    parts = [np.stack(np.meshgrid(u, u, [0.0], indexing="ij"), -1).reshape(-1, 3)]
    labels = [np.zeros(len(parts[0]), int)]
    for wall in (np.stack(np.meshgrid(u, [0.0], h, indexing="ij"), -1), np.stack(np.meshgrid([0.0], u, h, indexing="ij"), -1)):
        parts.append(wall.reshape(-1, 3))
        labels.append(np.ones(len(parts[-1]), int))

    def box(lo: tuple[float, float, float], hi: tuple[float, float, float], label: int) -> None:
        axes = [np.arange(a, b, step) for a, b in zip(lo, hi)]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        on_surface = np.any((grid - lo < step) | (hi - grid <= step), axis=1)
        parts.append(grid[on_surface])
        labels.append(np.full(on_surface.sum(), label))

    box((0.3, 0.3, 0.05), (0.8, 0.8, 0.5), 2)
    box((1.2, 0.9, 0.05), (1.6, 1.6, 0.9), 3)
    box((0.4, 1.2, 0.6), (1.0, 1.7, 0.7), 4)
    points, point_labels = np.concatenate(parts), np.concatenate(labels)
    palette = np.array([[120, 100, 80], [200, 200, 190], [150, 60, 40], [140, 70, 50], [60, 60, 160]], float)
    colour = np.clip(palette[point_labels] + rng.normal(0, 25, points.shape), 0, 255) / 255
    grid = np.floor(points / voxel).astype(np.int64)
    return grid, np.concatenate([colour, points / size], 1).astype(np.float32), point_labels


def test_small_unet_overfits_one_room() -> None:
    torch.manual_seed(0)
    grid, feats, labels = synthetic_room(np.random.default_rng(0))
    x, inverse = sparse_collate([torch.from_numpy(grid)], [torch.from_numpy(feats)])
    model = SparseUNet(6, 5, base_channels=16, channels=(16, 32, 64, 64, 64, 32, 32, 32), layers=(1,) * 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        out = model(x)
        loss = nn.functional.cross_entropy(to_points(out.logits, inverse), torch.from_numpy(labels))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Still in train mode: BatchNorm uses this room's batch statistics, as during the fit (its
    # running averages, momentum 0.01, lag far behind after a few dozen steps).
    with torch.no_grad():
        predicted = to_points(model(x).logits, inverse).argmax(1)
    accuracy = (predicted == torch.from_numpy(labels)).float().mean().item()
    print(f"\noverfit: {len(grid)} points, {len(x.feats)} voxels, loss {losses[0]:.3f} -> {losses[-1]:.3f}, accuracy {accuracy:.3f}")
    assert losses[-1] < 0.1 * losses[0]
    assert accuracy > 0.9
