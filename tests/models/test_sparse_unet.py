"""Sparse UNets: layout (parameter counts), output shapes, condition plumbing, and overfitting one room."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from pptkit.data.classes import STRUCTURED3D25
from pptkit.data.synth.scenes import make_scene
from pptkit.data.synth.styles import class_name
from pptkit.data.voxelize import voxel_mean, voxel_mode, voxelize
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


def synth_room(voxel: float) -> tuple[torch.Tensor, ...]:
    """One in-memory pptkit.data.synth Structured3D-style room (12 classes), voxelized.

    Returns voxel grid coords (M,3), voxel features (M,6) = mean colour / 255 and mean normal,
    voxel labels (M,) = the points' majority class, point labels (N,) and the point -> voxel index (N,).
    """
    scene = make_scene("structured3d", 0, seed=0, name="room")
    point_class = np.array([class_name("structured3d", kind) for kind in scene.kinds])[scene.part]
    labels = np.array([STRUCTURED3D25.index(name) for name in point_class])
    vox = voxelize(scene.coord, voxel)
    feats = voxel_mean(vox, np.concatenate([scene.color / 255.0, scene.normal], 1)).astype(np.float32)
    return (torch.from_numpy(vox.grid_coord), torch.from_numpy(feats),
            torch.from_numpy(voxel_mode(vox, labels)).long(), torch.from_numpy(labels),
            torch.from_numpy(vox.inverse))


def test_small_unet_overfits_one_room() -> None:
    torch.manual_seed(0)
    grid, feats, voxel_labels, point_labels, point_to_voxel = synth_room(voxel=0.1)
    x, inverse = sparse_collate([grid], [feats])  # one row per voxel already: only reorders
    target = torch.empty_like(voxel_labels).scatter_(0, inverse, voxel_labels)
    model = SparseUNet(6, len(STRUCTURED3D25), base_channels=16, channels=(16, 32, 64, 64, 64, 32, 32, 32),
                       layers=(1,) * 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = nn.functional.cross_entropy(model(x).logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # Still in train mode: BatchNorm uses this room's batch statistics, as during the fit (its
    # running averages, momentum 0.01, lag far behind after a few dozen steps).
    with torch.no_grad():
        logits = model(x).logits
    voxel_accuracy = (logits.argmax(1) == target).float().mean().item()
    point_pred = to_points(to_points(logits, inverse), point_to_voxel).argmax(1)
    point_accuracy = (point_pred == point_labels).float().mean().item()
    print(f"\noverfit: {len(point_labels)} points, {len(target)} voxels, {len(target.unique())} classes, "
          f"loss {losses[0]:.3f} -> {losses[-1]:.3f}, voxel accuracy {voxel_accuracy:.3f}, "
          f"point accuracy {point_accuracy:.3f}")
    assert losses[-1] < 0.1 * losses[0]
    assert voxel_accuracy > 0.9
    # Points sharing a 10 cm voxel with another class cap point accuracy below 1 (0.95 here).
    assert point_accuracy > 0.85


def test_convs_and_head_start_from_the_references_truncated_normal():
    from pptkit.models.pdnorm import pdnorm_factory
    from pptkit.sparse import Conv3d as SparseConv, SubMConv3d as Subm

    torch.manual_seed(0)
    model = SparseUNet(6, 13, norm_layer=pdnorm_factory(2, 16))
    convs = [m for m in model.modules() if isinstance(m, (Subm, SparseConv))]
    weights = torch.cat([m.weight.flatten() for m in convs] + [model.head.weight.flatten()])
    # trunc_normal_(std=0.02) cuts at +-2 absolute, as in timm and the reference: in effect a plain normal
    assert abs(weights.std().item() - 0.02) < 0.001 and abs(weights.mean().item()) < 0.001
    assert torch.count_nonzero(model.head.bias) == 0
    modulations = [p for name, p in model.named_parameters() if "modulation" in name or "adapt" in name]
    assert modulations and all(torch.count_nonzero(p) == 0 for p in modulations if p.ndim == 2)
    uniform = SparseUNet(6, 13, conv_init="uniform")
    assert uniform.stem[0].weight.abs().max() <= 1 / 750 ** 0.5  # fan-in uniform: 5^3 x 6 inputs
