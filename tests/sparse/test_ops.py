"""Torch-backend sparse ops against brute-force references, gradients, caching and collation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pptkit.errors import InputError
from pptkit.sparse import (
    BatchNorm,
    Conv3d,
    ConvTranspose3d,
    GlobalPool,
    ReLU,
    SparseTensor,
    SubMConv3d,
    available_backends,
    sparse_collate,
)
from pptkit.sparse import minkowski_backend, torch_backend
from pptkit.sparse.kernel_map import kernel_offsets
from pptkit.sparse.torch_backend import sparse_conv
from tests.sparse.reference import conv_reference, downsampled_coords_reference, transposed_reference
from tests.sparse.rooms import synthetic_room


def random_tensor(n_per_sample=(40, 30), extent=6, channels=3, dtype=torch.float32, seed=0) -> SparseTensor:
    """A small batch of random unique voxels in a cube, via sparse_collate."""
    gen = torch.Generator().manual_seed(seed)
    grids, feats = [], []
    for n in n_per_sample:
        grid = torch.unique(torch.randint(0, extent, (n, 3), generator=gen), dim=0)
        grids.append(grid)
        feats.append(torch.randn(len(grid), channels, generator=gen, dtype=dtype))
    x, _ = sparse_collate(grids, feats)
    return x


def test_kernel_offsets_canonical_order():
    assert kernel_offsets(2) == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)]
    k3 = kernel_offsets(3)
    assert len(k3) == 27 and k3[0] == (-1, -1, -1) and k3[1] == (-1, -1, 0) and k3[13] == (0, 0, 0)
    assert len(kernel_offsets(5)) == 125


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_submanifold_matches_reference(kernel_size):
    x = random_tensor()
    conv = SubMConv3d(3, 4, kernel_size=kernel_size)
    y = conv(x)
    assert torch.equal(y.coords, x.coords) and y.stride == 1
    expected = conv_reference(x.feats, x.coords, x.coords, 1, conv.weight.detach(), kernel_size)
    torch.testing.assert_close(y.feats, expected, rtol=1e-5, atol=1e-5)


def test_submanifold_at_stride_two_and_bias():
    x = random_tensor()
    down = Conv3d(3, 3)(x)
    conv = SubMConv3d(3, 2, kernel_size=3, bias=True)
    y = conv(down)
    expected = conv_reference(down.feats, down.coords, down.coords, 2, conv.weight.detach(), 3) + conv.bias.detach()
    torch.testing.assert_close(y.feats, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size", [2, 3])
def test_strided_conv_matches_reference(kernel_size):
    x = random_tensor(extent=9)
    conv = Conv3d(3, 5, kernel_size=kernel_size, stride=2)
    y = conv(x)
    assert y.stride == 2
    assert set(map(tuple, y.coords.tolist())) == downsampled_coords_reference(x.coords, 2)
    assert len(y.coords) == len(downsampled_coords_reference(x.coords, 2))
    expected = conv_reference(x.feats, x.coords, y.coords, 1, conv.weight.detach(), kernel_size)
    torch.testing.assert_close(y.feats, expected, rtol=1e-5, atol=1e-5)
    z = Conv3d(5, 2, kernel_size=kernel_size, stride=2)(y)  # stride 2 -> 4
    assert z.stride == 4 and set(map(tuple, z.coords.tolist())) == downsampled_coords_reference(x.coords, 4)


def test_transposed_conv_matches_reference():
    x = random_tensor(extent=9)
    coarse = Conv3d(3, 4)(x)
    up = ConvTranspose3d(4, 2)
    y = up(coarse)
    assert y.stride == 1 and y.coords is x.coords
    expected = transposed_reference(coarse.feats, coarse.coords, x.coords, 1, up.weight.detach(), 2)
    torch.testing.assert_close(y.feats, expected, rtol=1e-5, atol=1e-5)


def test_transposed_conv_needs_known_finer_coords():
    x = random_tensor()
    with pytest.raises(KeyError, match="stride 1"):
        ConvTranspose3d(3, 3)(SparseTensor(x.feats, x.coords * 2, stride=2))


@pytest.mark.parametrize(
    "conv, key",
    [(SubMConv3d(2, 3, 3), (1, 3, "subm")), (Conv3d(2, 3, 2, 2), (1, 2, "down2")), (Conv3d(2, 3, 3, 2), (1, 3, "down2"))],
)
def test_conv_gradients_match_finite_differences(conv, key):
    x = random_tensor(n_per_sample=(12, 9), extent=4, channels=2, dtype=torch.float64)
    conv.double()(x)
    kmap = x.context.kernel_map(key, lambda: pytest.fail("map should be cached"))
    feats = x.feats.clone().requires_grad_()
    weight = conv.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda f, w: sparse_conv(f, w, kmap), (feats, weight))
    # the transposed convolution runs the same map with input and output exchanged
    out_feats = torch.randn(kmap.num_out, 3, dtype=torch.float64, requires_grad=True)
    up_weight = torch.randn(kmap.kernel_volume, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f, w: sparse_conv(f, w, kmap.transposed), (out_feats, up_weight))


def test_kernel_map_pairs_sorted_by_output_row_both_ways():
    x = random_tensor(extent=9)
    Conv3d(3, 3)(SubMConv3d(3, 3)(x))
    for key in [(1, 3, "subm"), (1, 2, "down2")]:
        kmap = x.context.kernel_map(key, lambda: pytest.fail("map should be cached"))
        assert kmap.transposed.transposed is kmap
        for m in (kmap, kmap.transposed):
            for k, (src, dst) in enumerate(zip(m.in_idx, m.out_idx)):
                assert torch.all(dst[1:] > dst[:-1]), (key, k)
            pairs = {(k, i, o) for k in range(m.kernel_volume) for i, o in zip(m.in_idx[k].tolist(), m.out_idx[k].tolist())}
            back = m.transposed
            swapped = {(k, o, i) for k in range(m.kernel_volume) for i, o in zip(back.in_idx[k].tolist(), back.out_idx[k].tolist())}
            assert pairs == swapped


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_and_small_chunks_change_only_how_work_is_cut(monkeypatch, workers):
    x = random_tensor(n_per_sample=(70, 60), extent=7, channels=3, dtype=torch.float64)
    net = torch.nn.Sequential(SubMConv3d(3, 4), Conv3d(4, 4), SubMConv3d(4, 4), ConvTranspose3d(4, 2)).double()

    def run():
        feats = x.feats.clone().requires_grad_()
        out = net(x.replace(feats)).feats
        return [out, *torch.autograd.grad(out.square().sum(), [feats, *net.parameters()])]

    expected = run()
    monkeypatch.setattr(torch_backend, "CPU_CHUNK_ELEMENTS", 9)  # 1-3 pairs per chunk
    monkeypatch.setattr(torch_backend, "_CPU_WORKERS", workers)
    kmap = x.context.kernel_map((1, 3, "subm"), lambda: pytest.fail("map should be cached"))
    assert len(torch_backend._row_ranges(kmap, workers)) == workers
    for got, want in zip(run(), expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    net[0].weight.requires_grad_(False)  # a frozen layer: input gradient only, still split among workers
    feats = x.feats.clone().requires_grad_()
    (grad,) = torch.autograd.grad(net(x.replace(feats)).feats.square().sum(), [feats])
    torch.testing.assert_close(grad, expected[1], rtol=1e-12, atol=1e-12)


def test_module_gradients_flow_through_layers():
    x = random_tensor(n_per_sample=(12, 9), extent=4, channels=2, dtype=torch.float64)
    net = torch.nn.Sequential(SubMConv3d(2, 3), BatchNorm(3), ReLU(), Conv3d(3, 3), ConvTranspose3d(3, 2)).double()
    feats = x.feats.clone().requires_grad_()

    def run(f):
        return net(x.replace(f)).feats

    assert torch.autograd.gradcheck(run, (feats,))


def test_kernel_maps_are_cached_and_shared():
    x = random_tensor()
    a, b = SubMConv3d(3, 3), SubMConv3d(3, 3)
    a(x)
    key = (1, 3, "subm")
    first = x.context.kernel_map(key, lambda: pytest.fail("map should be cached"))
    y = b(a(x))
    assert x.context.kernel_map(key, lambda: None) is first
    down = Conv3d(3, 3)(y)
    down_map = x.context.kernel_map((1, 2, "down2"), lambda: None)
    ConvTranspose3d(3, 3)(down)  # re-uses the downsampling map, transposed
    assert x.context.kernel_map((1, 2, "down2"), lambda: None) is down_map
    assert sorted(x.context.cached_keys()) == [(1, 2, "down2"), (1, 3, "subm")]


def test_batchnorm_relu_and_condition_ride_along():
    x = random_tensor().with_condition({"dataset": "scannet"})
    bn = BatchNorm(3)
    y = ReLU()(bn(x))
    ref = torch.nn.BatchNorm1d(3, eps=1e-3, momentum=0.01)
    torch.testing.assert_close(y.feats, torch.relu(ref(x.feats)))
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    z = ConvTranspose3d(3, 3)(Conv3d(3, 3)(SubMConv3d(3, 3)(y)))
    assert z.condition == {"dataset": "scannet"} and z.context is x.context


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_global_pool(mode):
    x = random_tensor()
    pooled = GlobalPool(mode)(x)
    assert pooled.shape == (2, 3)
    for b in range(2):
        rows = x.feats[x.coords[:, 0] == b]
        expected = rows.mean(0) if mode == "avg" else rows.max(0).values
        torch.testing.assert_close(pooled[b], expected)


def test_collate_merges_duplicates_and_inverse_maps_points():
    grids = [np.array([[0, 0, 0], [1, 2, 3], [0, 0, 0], [5, 5, 5]]), np.array([[0, 0, 0], [1, 2, 3]])]
    feats = [torch.tensor([[1.0], [2.0], [3.0], [4.0]]), torch.tensor([[10.0], [20.0]])]
    x, inverse = sparse_collate(grids, feats)
    assert x.feats.shape == (5, 1) and x.batch_size == 2
    coords = [tuple(c) for c in x.coords.tolist()]
    assert coords == sorted(coords) and len(set(coords)) == 5
    points = torch.cat([torch.cat([torch.full((len(g), 1), i), torch.as_tensor(g)], 1) for i, g in enumerate(grids)])
    assert torch.equal(x.coords[inverse].long(), points)
    assert x.feats[inverse][:, 0].tolist() == [2.0, 2.0, 2.0, 4.0, 10.0, 20.0]


def test_collate_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="sample 0"):
        sparse_collate([np.zeros((3, 3), dtype=int)], [torch.zeros(2, 1)])
    with pytest.raises(ValueError, match="integers"):
        sparse_collate([np.zeros((2, 3))], [torch.zeros(2, 1)])


def test_room_like_coordinates_match_reference():
    grid = synthetic_room(600, np.random.default_rng(1))
    x, _ = sparse_collate([grid], [torch.randn(len(grid), 2, generator=torch.Generator().manual_seed(0))])
    conv = SubMConv3d(2, 2)
    expected = conv_reference(x.feats, x.coords, x.coords, 1, conv.weight.detach(), 3)
    torch.testing.assert_close(conv(x).feats, expected, rtol=1e-5, atol=1e-5)


def test_state_dict_layout_is_backend_independent():
    conv = SubMConv3d(4, 6, kernel_size=3)
    assert conv.weight.shape == (27, 4, 6) and list(conv.state_dict()) == ["weight"]
    assert Conv3d(4, 6).weight.shape == (8, 4, 6) and ConvTranspose3d(4, 6).weight.shape == (8, 4, 6)


def test_unavailable_minkowski_backend_names_make_target(monkeypatch):
    monkeypatch.setattr(minkowski_backend, "_ME", None)
    monkeypatch.setattr(minkowski_backend, "_ME_TRIED", True)
    assert available_backends() == ["torch"]
    with pytest.raises(InputError, match="make minkowski"):
        SubMConv3d(3, 3, backend="minkowski")
    with pytest.raises(ValueError, match="unknown sparse backend"):
        SubMConv3d(3, 3, backend="spconv")
