"""The torch and MinkowskiEngine backends agree: same weights -> same outputs and gradients.

Runs on room-like coordinates: voxelized real S3DIS rooms when ../shared/data is present, and
synthetic furnished rooms always. Skipped only when MinkowskiEngine is not importable.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pptkit.sparse import Conv3d, ConvTranspose3d, SparseTensor, SubMConv3d, available_backends, sparse_collate, torch_backend
from pptkit.sparse.kernel_map import kernel_offsets
from pptkit.sparse.minkowski_backend import to_minkowski_weight
from tests.conftest import SHARED_DATA
from tests.sparse.rooms import s3dis_room, synthetic_room

pytestmark = [
    pytest.mark.minkowski,
    pytest.mark.skipif(
        "minkowski" not in available_backends(), reason="MinkowskiEngine is not importable (run `make minkowski`)"
    ),
]

S3DIS_ROOMS = ["Area_1/conferenceRoom_1", "Area_1/hallway_1", "Area_5/copyRoom_1"]


def _room_grids(source: str) -> list[np.ndarray]:
    if source == "synthetic":
        return [synthetic_room(2500, np.random.default_rng(7)), synthetic_room(1500, np.random.default_rng(8))]
    rooms = [SHARED_DATA / "s3dis-sample" / r for r in S3DIS_ROOMS]
    if not all(r.exists() for r in rooms):
        pytest.skip(f"real-data sample {SHARED_DATA / 's3dis-sample'} is absent (see ../shared/data/README.md)")
    return [s3dis_room(r, voxel_size=0.05, max_voxels=1500) for r in rooms]


@pytest.fixture(scope="module", params=["synthetic", "s3dis"])
def rooms(request) -> tuple[list[np.ndarray], list[torch.Tensor]]:
    grids = _room_grids(request.param)
    gen = torch.Generator().manual_seed(0)
    return grids, [torch.randn(len(g), 4, generator=gen) for g in grids]


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """rtol 1e-4, with an absolute floor relative to the tensor's scale (float32 sums of many pairs)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


def _run(make_layers, grids, feats, backend: str):
    """Collate, run the layers, backprop a fixed random projection; return output and gradients."""
    torch.manual_seed(0)
    layers = make_layers(backend)
    x, _ = sparse_collate(grids, feats)
    x = x.replace(x.feats.clone().requires_grad_())
    y = layers(x)
    target = torch.randn(y.feats.shape, generator=torch.Generator().manual_seed(1))
    (y.feats * target).sum().backward()
    grads = {name: p.grad for name, p in layers.named_parameters()}
    return y, x.feats.grad, grads


def _check_backends_agree(make_layers, grids, feats):
    y_t, gx_t, gw_t = _run(make_layers, grids, feats, "torch")
    y_m, gx_m, gw_m = _run(make_layers, grids, feats, "minkowski")
    assert torch.equal(y_t.coords, y_m.coords) and y_t.stride == y_m.stride
    _assert_close(y_m.feats, y_t.feats)
    _assert_close(gx_m, gx_t)
    assert gw_t.keys() == gw_m.keys()
    for name in gw_t:
        _assert_close(gw_m[name], gw_t[name])


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_submanifold_agrees(rooms, kernel_size):
    _check_backends_agree(lambda b: SubMConv3d(4, 6, kernel_size, bias=True, backend=b), *rooms)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_strided_conv_agrees(rooms, kernel_size):
    def layers(b):
        return torch.nn.Sequential(
            Conv3d(4, 6, kernel_size, stride=2, backend=b),
            SubMConv3d(6, 6, 3, backend=b),  # at stride 2
            Conv3d(6, 5, kernel_size, stride=2, backend=b),  # stride 2 -> 4
        )

    _check_backends_agree(layers, *rooms)


def test_transposed_conv_agrees(rooms):
    def layers(b):
        return torch.nn.Sequential(
            Conv3d(4, 6, backend=b), Conv3d(6, 6, backend=b),
            ConvTranspose3d(6, 5, backend=b), ConvTranspose3d(5, 3, bias=True, backend=b),
        )

    _check_backends_agree(layers, *rooms)


@pytest.mark.parametrize("kernel_size", [3, 2])
def test_weight_layout_mapping(kernel_size):
    """One-hot weight at canonical offset i must make ME read the voxel at centre + offsets[i]."""
    offsets = kernel_offsets(kernel_size)
    coords = torch.tensor([[0, 4 + dx, 4 + dy, 4 + dz] for dx, dy, dz in offsets], dtype=torch.int32)
    feats = torch.arange(1, len(offsets) + 1, dtype=torch.float32)[:, None]
    conv = (SubMConv3d if kernel_size % 2 else Conv3d)(1, 1, kernel_size, backend="minkowski")
    centre = [0, 4, 4, 4]
    for i in range(len(offsets)):
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[i] = 1
        y = conv(SparseTensor(feats, coords))
        row = [tuple(c) for c in y.coords.tolist()].index(tuple(centre))
        assert y.feats[row, 0].item() == i + 1
    me_weight = to_minkowski_weight(torch.arange(len(offsets) * 1.0).view(-1, 1, 1), kernel_size)
    # ME lists offsets with dx fastest: its row j is canonical offset (dx, dy, dz) with j = (dz*k + dy)*k + dx
    k, a = kernel_size, (-(kernel_size // 2) if kernel_size % 2 else 0)
    for j in range(len(offsets)):
        dx, dy, dz = j % k + a, j // k % k + a, j // (k * k) + a
        assert offsets[int(me_weight[j, 0, 0])] == (dx, dy, dz)


@pytest.mark.parametrize("workers", [1, 2])
def test_sparse_unet_agrees(rooms, workers, monkeypatch):
    unet = pytest.importorskip("pptkit.models.sparse_unet")
    monkeypatch.setattr(torch_backend, "_CPU_WORKERS", workers)  # 2: the row-split parallel path
    torch.manual_seed(0)
    small = dict(base_channels=8, channels=(8, 16, 16, 16, 16, 8, 8, 8), layers=(1,) * 8)
    state = unet.SparseUNet(4, 5, **small).state_dict()

    def forward(backend: str):
        net = unet.SparseUNet(4, 5, backend=backend, **small)
        net.load_state_dict(state)
        x, _ = sparse_collate(*rooms)
        out = net(x)
        target = torch.randn(out.logits.shape, generator=torch.Generator().manual_seed(1))
        (out.logits * target).sum().backward()
        return out.logits, {n: p.grad for n, p in net.named_parameters()}

    logits_t, grads_t = forward("torch")
    logits_m, grads_m = forward("minkowski")
    _assert_close(logits_m, logits_t)
    for name in grads_t:
        _assert_close(grads_m[name], grads_t[name])
