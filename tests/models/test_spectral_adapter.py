"""Graph bases, Morton order, local chunks and the PCSA adapter of PointGST."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pptkit.models.point_transformer import PointTransformerEncoder
from pptkit.models.spectral_adapter import (
    PCSA,
    SpectralAdapters,
    SpectralBasis,
    chunk_bounds,
    edge_weights,
    gather_nodes,
    graph_basis,
    graph_laplacian,
    local_graph_basis,
    morton_order,
)

TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}


def unit_sphere_centres(batch: int, nodes: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Random centres scaled so each sample's farthest one lies on the unit sphere."""
    points = torch.randn(batch, nodes, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return points / points.norm(dim=-1, keepdim=True).amax(dim=1, keepdim=True)


def randomise(adapter: PCSA, seed: int) -> PCSA:
    """Give every parameter of the adapter nonzero values (the trained case)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype) * 0.3)
    return adapter


# --- Laplacian and basis -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_normalised_basis_is_orthonormal_sorted_in_0_2_and_diagonalises_the_laplacian(dtype):
    centres = unit_sphere_centres(3, 24, seed=1, dtype=dtype)
    laplacian = graph_laplacian(centres)
    eigenvalues, basis = graph_basis(centres)
    tol = TOLERANCE[dtype]
    assert eigenvalues.dtype == basis.dtype == dtype
    assert eigenvalues.shape == (3, 24) and basis.shape == (3, 24, 24)
    torch.testing.assert_close(basis.mT @ basis, torch.eye(24, dtype=dtype).expand(3, 24, 24), atol=tol, rtol=0)
    assert (eigenvalues.diff(dim=-1) >= 0).all()
    assert eigenvalues.min() >= -tol and eigenvalues.max() <= 2 + tol
    torch.testing.assert_close(laplacian @ basis, basis * eigenvalues.unsqueeze(-2), atol=tol * 10, rtol=0)


def test_normalised_laplacian_null_vector_is_the_square_root_of_the_degrees():
    centres = unit_sphere_centres(2, 16, seed=2)
    degree = edge_weights(centres).sum(-1)
    eigenvalues, basis = graph_basis(centres)
    assert eigenvalues[:, 0].abs().max() < 1e-12
    expected = degree.sqrt() / degree.sqrt().norm(dim=-1, keepdim=True)
    torch.testing.assert_close(basis[:, :, 0], expected, atol=1e-12, rtol=0)  # sign fixed positive


def test_combinatorial_laplacian_is_degree_minus_weights_with_a_constant_null_vector():
    centres = unit_sphere_centres(2, 16, seed=3)
    weights = edge_weights(centres)
    laplacian = graph_laplacian(centres, normalized=False)
    off_diagonal = ~torch.eye(16, dtype=torch.bool)
    torch.testing.assert_close(laplacian[:, off_diagonal], -weights[:, off_diagonal])
    torch.testing.assert_close(laplacian.sum(-1), torch.zeros(2, 16, dtype=torch.float64), atol=1e-12, rtol=0)
    eigenvalues, basis = graph_basis(centres, normalized=False)
    assert (eigenvalues.diff(dim=-1) >= 0).all() and eigenvalues.min() > -1e-12
    torch.testing.assert_close(basis[:, :, 0], torch.full((2, 16), 1 / 4, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(laplacian @ basis, basis * eigenvalues.unsqueeze(-2), atol=1e-10, rtol=0)
    # Eigenvalues go beyond 2: this is not the normalised Laplacian.
    assert eigenvalues.max() > 2


def test_d_min_is_per_sample_and_excludes_the_diagonal():
    # Smallest distinct distance 0.5 (points 0 and 1); the second sample is the first times 10.
    first = torch.tensor([[0.0, 0, 0], [0.5, 0, 0], [0, 3, 0], [0, 0, 4]], dtype=torch.float64)
    centres = torch.stack([first, first * 10])
    weights = edge_weights(centres)
    for sample in weights:
        torch.testing.assert_close(sample.diagonal(), torch.ones(4, dtype=torch.float64))
        assert sample[0, 1] == 1.0  # the closest pair weighs like a self-loop
        torch.testing.assert_close(sample[0, 2], torch.tensor(0.5 / 3, dtype=torch.float64))
        torch.testing.assert_close(sample[2, 3], torch.tensor(0.5 / 5, dtype=torch.float64))
        torch.testing.assert_close(sample, sample.T, atol=0, rtol=0)
    # The released code takes one d_min over the whole batch: the scaled sample's closest pair
    # then weighs 0.5 / 5 instead of 1 (a sample's graph depends on its batch mates).
    reference = edge_weights(centres, min_distance="reference")
    torch.testing.assert_close(reference[0], weights[0])
    torch.testing.assert_close(reference[1, 0, 1], torch.tensor(0.1, dtype=torch.float64))


def test_reference_min_distance_reproduces_the_collapse_toward_self_loops():
    # As in the issue: float32 unit-scale centres, G = 64. torch.cdist's matmul path leaves float
    # error on its diagonal; the released code takes d_min from it.
    centres = unit_sphere_centres(4, 64, seed=0, dtype=torch.float32)
    true_min = torch.linalg.vector_norm(centres.unsqueeze(-2) - centres.unsqueeze(-3), dim=-1)
    true_min = true_min.masked_fill(torch.eye(64, dtype=torch.bool), torch.inf).amin(dim=(-2, -1))
    assert true_min.min() > 0.01
    off_diagonal = ~torch.eye(64, dtype=torch.bool)
    distinct = edge_weights(centres)
    reference = edge_weights(centres, min_distance="reference")
    assert (distinct[:, off_diagonal].amax(-1) == 1).all()
    assert reference[:, off_diagonal].amax() < 0.01  # every edge collapsed...
    assert reference.diagonal(dim1=-2, dim2=-1).amin() < 0.9  # ...and self-loops vary with float error
    # On the normalised Laplacian the whole spectrum collapses toward 0.
    assert graph_basis(centres, min_distance="reference")[0].amax() < 0.1
    assert graph_basis(centres)[0].amax() > 0.9


def test_duplicated_centres_weigh_one_and_degenerate_samples_are_fully_connected():
    centres = torch.tensor(
        [
            [[0.0, 0, 0], [0.0, 0, 0], [1, 0, 0], [0, 2, 0]],  # one duplicated pair
            [[0.3, 0.3, 0.3]] * 4,  # all equal: no distinct pair
        ],
        dtype=torch.float64,
    )
    weights = edge_weights(centres)
    assert weights[0, 0, 1] == weights[0, 1, 0] == 1.0
    torch.testing.assert_close(weights[0, 0, 2], torch.tensor(1.0, dtype=torch.float64))  # d_min = 1
    torch.testing.assert_close(weights[0, 2, 3], torch.tensor(1 / math.sqrt(5), dtype=torch.float64))
    assert torch.equal(weights[1], torch.ones(4, 4, dtype=torch.float64))
    eigenvalues, basis = graph_basis(centres)
    assert torch.isfinite(eigenvalues).all() and torch.isfinite(basis).all()
    single_value, single_basis = graph_basis(torch.zeros(2, 1, 3))
    assert torch.equal(single_value, torch.zeros(2, 1)) and torch.equal(single_basis, torch.ones(2, 1, 1))


def test_bad_centres_and_options_are_refused():
    with pytest.raises(ValueError, match="centres must be"):
        graph_basis(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        graph_basis(torch.tensor([[[0.0, float("nan"), 0], [1.0, 0, 0]]]))
    with pytest.raises(ValueError, match="min_distance"):
        graph_basis(torch.zeros(1, 2, 3), min_distance="cdist")


# --- Morton order and local graphs ----------------------------------------------------------------


def test_morton_order_of_cube_corners_with_negative_coordinates():
    corners = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)])
    shuffle = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    order = morton_order(corners[shuffle].unsqueeze(0), bits=1)[0]
    # y is the most significant axis, then x, then z (the reference's key).
    listed = corners[shuffle][order]
    key = (listed[:, 1] > 0) * 4 + (listed[:, 0] > 0) * 2 + (listed[:, 2] > 0)
    assert key.tolist() == list(range(8))


def test_morton_order_traces_the_z_curve_on_a_grid_shifted_below_zero():
    # A 4 x 4 grid in (x, y) at -1.5..1.5: without the shift the curve would wrap at 0.
    expected = [
        (0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (3, 0), (2, 1), (3, 1),
        (0, 2), (1, 2), (0, 3), (1, 3), (2, 2), (3, 2), (2, 3), (3, 3),
    ]
    cells = torch.tensor([(x, y) for x in range(4) for y in range(4)])
    shuffle = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    cells = cells[shuffle]
    centres = torch.cat([cells.double() - 1.5, torch.zeros(16, 1, dtype=torch.float64)], dim=1)
    order = morton_order(centres.unsqueeze(0), bits=2)[0]
    assert [tuple(cell) for cell in cells[order].tolist()] == expected


def test_morton_order_does_not_wrap_at_zero_and_is_translation_and_scale_invariant():
    xs = torch.tensor([0.5, -0.01, 0.9, -0.3, 0.01, -0.6])
    centres = torch.stack([xs, torch.zeros(6), torch.zeros(6)], dim=-1).unsqueeze(0)
    order = morton_order(centres)[0]
    assert xs[order].tolist() == sorted(xs.tolist())
    cloud = unit_sphere_centres(2, 50, seed=4)
    base = morton_order(cloud)
    assert torch.equal(morton_order(cloud * 7.5 + torch.tensor([-3.0, 20.0, 1.0], dtype=torch.float64)), base)


def test_morton_order_is_a_stable_permutation():
    centres = torch.tensor([[[0.0, 0, 0], [1.0, 1, 1], [0.0, 0, 0], [1.0, 1, 1], [0.0, 0, 0]]])
    assert morton_order(centres)[0].tolist() == [0, 2, 4, 1, 3]  # equal keys keep index order
    cloud = unit_sphere_centres(3, 40, seed=5)
    order = morton_order(cloud)
    assert torch.equal(order.sort(dim=-1).values, torch.arange(40).expand(3, 40))
    with pytest.raises(ValueError, match="bits"):
        morton_order(cloud, bits=22)


def test_chunk_bounds_end_with_a_smaller_chunk():
    assert chunk_bounds(70, 32) == [(0, 32), (32, 64), (64, 70)]
    assert chunk_bounds(64, 32) == [(0, 32), (32, 64)]
    assert chunk_bounds(5, 32) == [(0, 5)]
    with pytest.raises(ValueError, match="local_size"):
        chunk_bounds(5, 0)


@pytest.mark.parametrize("nodes", [64, 70, 65])
def test_local_bases_are_block_diagonal_per_chunk(nodes):
    centres = unit_sphere_centres(2, nodes, seed=6)
    eigenvalues, block_basis = local_graph_basis(centres, local_size=32)
    inside = torch.zeros(nodes, nodes, dtype=torch.bool)
    for start, stop in chunk_bounds(nodes, 32):
        inside[start:stop, start:stop] = True
        chunk_values, chunk_basis = graph_basis(centres[:, start:stop])
        torch.testing.assert_close(eigenvalues[:, start:stop], chunk_values, atol=1e-12, rtol=0)
        torch.testing.assert_close(block_basis[:, start:stop, start:stop], chunk_basis, atol=1e-12, rtol=0)
        assert (eigenvalues[:, start:stop].diff(dim=-1) >= 0).all()
    assert (block_basis[:, ~inside] == 0).all()
    torch.testing.assert_close(block_basis.mT @ block_basis, torch.eye(nodes, dtype=torch.float64).expand_as(block_basis))


def test_spectral_basis_from_centres_sorts_local_graphs_along_the_morton_curve():
    centres = unit_sphere_centres(3, 40, seed=7)
    basis = SpectralBasis.from_centres(centres, local_size=16, normalized=False)
    assert basis.num_nodes == 40 and basis.local_size == 16
    assert torch.equal(basis.order, morton_order(centres))
    assert torch.equal(gather_nodes(basis.order, basis.inverse_order), torch.arange(40).expand(3, 40))
    global_values, global_basis = graph_basis(centres, normalized=False)
    assert torch.equal(basis.global_basis, global_basis) and torch.equal(basis.global_eigenvalues, global_values)
    local_values, local_basis = local_graph_basis(gather_nodes(centres, basis.order), 16, normalized=False)
    assert torch.equal(basis.local_basis, local_basis) and torch.equal(basis.local_eigenvalues, local_values)


# --- the adapter -----------------------------------------------------------------------------------


def released_forward(adapter: PCSA, x: torch.Tensor, basis: SpectralBasis) -> torch.Tensor:
    """The released PCSA restated sample by sample and chunk by chunk, for comparison."""
    hidden = adapter.down(x)
    nodes = basis.num_nodes
    out = adapter.act(hidden).clone()
    reference = adapter.transform == "reference"

    def branch(u: torch.Tensor, norm: nn.LayerNorm, signal: torch.Tensor) -> torch.Tensor:
        forward, inverse = (u, u.T) if reference else (u.T, u)
        spectrum = forward @ signal
        spectrum = spectrum + adapter.act(adapter.spectral(norm(spectrum)))
        return inverse @ spectrum

    for sample in range(x.shape[0]):
        signal = hidden[sample, -nodes:]
        graph = branch(basis.global_basis[sample], adapter.global_norm, signal)
        for start, stop in chunk_bounds(nodes, basis.local_size):
            tokens = basis.order[sample, start:stop]
            chunk = basis.local_basis[sample, start:stop, start:stop]
            graph[tokens] += branch(chunk, adapter.local_norm, signal[tokens])
        out[sample, -nodes:] += graph
    return adapter.up(out) * adapter.scale


@pytest.mark.parametrize("transform", ["math", "reference"])
@pytest.mark.parametrize("with_cls", [True, False])
def test_adapter_at_init_outputs_exactly_zero(transform, with_cls):
    torch.manual_seed(0)
    adapter = PCSA(dim=48, rank=8, transform=transform).double()
    basis = SpectralBasis.from_centres(unit_sphere_centres(2, 40, seed=8), local_size=16)
    x = torch.randn(2, 40 + with_cls, 48, dtype=torch.float64) * 5
    out = adapter.bind(basis)(x)
    assert out.shape == x.shape
    assert torch.equal(out, torch.zeros_like(x))


@pytest.mark.parametrize("transform", ["math", "reference"])
@pytest.mark.parametrize("nodes", [48, 53])
def test_adapter_matches_the_released_computation(transform, nodes):
    torch.manual_seed(1)
    adapter = randomise(PCSA(dim=24, rank=6, scale=0.7, transform=transform).double(), seed=2)
    basis = SpectralBasis.from_centres(unit_sphere_centres(3, nodes, seed=9), local_size=16)
    x = torch.randn(3, nodes + 1, 24, dtype=torch.float64)
    torch.testing.assert_close(adapter(x, basis), released_forward(adapter, x, basis), atol=1e-12, rtol=0)


def test_cls_token_is_not_a_graph_node():
    torch.manual_seed(2)
    adapter = randomise(PCSA(dim=16, rank=4).double(), seed=3)
    basis = SpectralBasis.from_centres(unit_sphere_centres(2, 20, seed=10), local_size=8)
    x = torch.randn(2, 21, 16, dtype=torch.float64)
    out = adapter(x, basis)
    torch.testing.assert_close(out[:, 0], adapter.up(adapter.act(adapter.down(x[:, 0]))))
    torch.testing.assert_close(out[:, 1:], adapter(x[:, 1:], basis))


def test_reference_transform_differs_unless_the_basis_is_symmetric():
    torch.manual_seed(3)
    math_adapter = randomise(PCSA(dim=16, rank=4).double(), seed=4)
    reference_adapter = PCSA(dim=16, rank=4, transform="reference").double()
    reference_adapter.load_state_dict(math_adapter.state_dict())
    x = torch.randn(2, 17, 16, dtype=torch.float64)
    basis = SpectralBasis.from_centres(unit_sphere_centres(2, 16, seed=11), local_size=8)
    assert not torch.allclose(basis.global_basis, basis.global_basis.mT)
    assert not torch.allclose(math_adapter(x, basis), reference_adapter(x, basis))
    # A Householder reflection is a symmetric orthogonal basis: then U = Uᵀ and both agree.
    v = torch.randn(2, 16, 1, dtype=torch.float64)
    householder = torch.eye(16, dtype=torch.float64) - 2 * v @ v.mT / (v.mT @ v)
    symmetric = SpectralBasis(
        global_eigenvalues=basis.global_eigenvalues,
        global_basis=householder,
        order=basis.order,
        inverse_order=basis.inverse_order,
        local_eigenvalues=basis.local_eigenvalues,
        local_basis=torch.eye(16, dtype=torch.float64).expand(2, 16, 16),
        local_size=8,
    )
    torch.testing.assert_close(math_adapter(x, symmetric), reference_adapter(x, symmetric), atol=1e-12, rtol=0)


def test_gradient_reaches_up_at_once_and_the_spectral_layer_after_one_step():
    torch.manual_seed(4)
    adapter = PCSA(dim=16, rank=4).double()
    basis = SpectralBasis.from_centres(unit_sphere_centres(2, 24, seed=12), local_size=8)
    x = torch.randn(2, 25, 16, dtype=torch.float64)
    target = torch.randn(2, 25, 16, dtype=torch.float64)
    optimizer = torch.optim.SGD(adapter.parameters(), lr=0.1)

    def step() -> None:
        optimizer.zero_grad()
        nn.functional.mse_loss(adapter(x, basis), target).backward()

    step()
    # Zero up-projection: nothing upstream of it gets a gradient at step 0.
    assert adapter.up.weight.grad.abs().max() > 0 and adapter.up.bias.grad.abs().max() > 0
    assert torch.equal(adapter.spectral.weight.grad, torch.zeros_like(adapter.spectral.weight))
    assert torch.equal(adapter.down.weight.grad, torch.zeros_like(adapter.down.weight))
    optimizer.step()
    step()
    assert adapter.spectral.weight.grad.abs().max() > 0 and adapter.spectral.bias.grad.abs().max() > 0
    assert adapter.down.weight.grad.abs().max() > 0
    assert adapter.global_norm.weight.grad.abs().max() == 0  # LayerNorms wait for the spectral layer
    optimizer.step()
    step()
    assert adapter.global_norm.weight.grad.abs().max() > 0 and adapter.local_norm.weight.grad.abs().max() > 0


def test_adapter_refuses_tokens_that_do_not_fit_the_basis():
    adapter = PCSA(dim=16, rank=4)
    basis = SpectralBasis.from_centres(unit_sphere_centres(2, 12, seed=13, dtype=torch.float32), local_size=4)
    with pytest.raises(ValueError, match="does not fit"):
        adapter(torch.randn(2, 11, 16), basis)
    with pytest.raises(ValueError, match="does not fit"):
        adapter(torch.randn(3, 13, 16), basis)
    with pytest.raises(ValueError, match=r"\(B, T, 16\)"):
        adapter(torch.randn(2, 13, 8), basis)
    with pytest.raises(ValueError, match="transform"):
        PCSA(transform="transpose")


def test_spectral_adapters_bind_one_basis_for_every_block():
    torch.manual_seed(5)
    adapters = SpectralAdapters(depth=3, dim=16, rank=4)
    for index, adapter in enumerate(adapters):
        randomise(adapter, seed=20 + index)
    basis = SpectralBasis.from_centres(unit_sphere_centres(2, 12, seed=14, dtype=torch.float32), local_size=4)
    x = torch.randn(2, 13, 16)
    sides = adapters.bind(basis)
    assert len(sides) == 3
    for side, adapter in zip(sides, adapters):
        assert torch.equal(side(x), adapter(x, basis))
    assert sum(p.numel() for p in adapters.parameters()) == 3 * (16 * 4 + 4 + 2 * 2 * 4 + 4 * 4 + 4 + 4 * 16 + 16)


@pytest.mark.parametrize("train_mode", [False, True])
def test_untrained_adapters_leave_the_point_transformer_output_bit_identical(train_mode):
    torch.manual_seed(6)
    encoder = PointTransformerEncoder(
        embed_dim=48, depth=3, num_heads=4, num_groups=20, group_size=8, drop_path_rate=0.1
    ).double()
    adapters = SpectralAdapters(depth=3, dim=48, rank=6).double()
    encoder.train(train_mode)
    adapters.train(train_mode)
    points = torch.randn(3, 256, 3, dtype=torch.float64)
    patches, centres = encoder.group(points)
    tokens = encoder.embed(patches)
    basis = SpectralBasis.from_centres(centres, local_size=8)  # 20 nodes: chunks of 8, 8, 4
    torch.manual_seed(7)  # drop-path draws the same masks in both runs
    backbone = encoder.forward_tokens(tokens, centres)
    torch.manual_seed(7)
    adapted = encoder.forward_tokens(tokens, centres, ffn_sides=adapters.bind(basis))
    assert torch.equal(adapted, backbone)
    randomise(adapters[1], seed=8)  # and a trained adapter does change it
    torch.manual_seed(7)
    assert not torch.allclose(encoder.forward_tokens(tokens, centres, ffn_sides=adapters.bind(basis)), backbone)
