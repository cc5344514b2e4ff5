"""Point Cloud Spectral Adapters (PCSA) of PointGST (Liang et al., arXiv 2410.08114).

A frozen point-patch Transformer is tuned in the graph spectral domain of its patch centres:

- Graphs: every sample's G patch centres form a complete graph with edge weights
  w_ij = d_min / d_ij and self-loops 1, where d_min is the sample's smallest distance between two
  distinct centres (so the closest pair weighs 1, like a self-loop). The eigenvectors U of its
  Laplacian, sorted by ascending eigenvalue, are the graph Fourier basis: Uᵀx moves a signal on
  the nodes to the spectral domain, Ux back. A *global* graph spans all G centres; *local* graphs
  are consecutive chunks of the centres along a Morton (z-order) curve.
- `SpectralBasis` holds both bases, computed once per sample and shared by every block.
- `PCSA`, one per block, in parallel with the feed-forward branch: down-projection to rank r,
  the graph Fourier transform on the global and on the local graphs, one spectral layer shared
  by both, the inverse transform, sum, up-projection. The shared spectral layer and the
  up-projection start at zero, so an untrained adapter adds exactly zero to its block.

Deliberate deviations from the released code, each with the reference behaviour as an option
where it changes results:

- d_min is per sample and excludes the diagonal exactly. The reference takes one minimum over the
  whole batch of a `torch.cdist` whose diagonal carries float error (≈1e-4 in float32), which
  shrinks every edge toward zero next to its self-loops; `min_distance="reference"`.
- The forward transform is Uᵀx and the inverse Ux; the reference applies U·x forward and Uᵀ·x
  back, `transform="reference"`.
- The symmetric normalised Laplacian is the default (the paper's); the reference computes the
  combinatorial D − W, `normalized=False`.
- Eigenvector signs are fixed (largest-magnitude entry positive) so CPU and CUDA solvers agree.
- The Morton curve quantises each sample's bounding box into 2^bits cubic cells; the reference
  truncates coordinates ×100 toward zero, which wraps negative values around the curve.
- G need not be a multiple of the local chunk size: the last chunk is smaller (the reference
  requires divisibility).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

MinDistance = Literal["distinct", "reference"]
Transform = Literal["math", "reference"]
MIN_DISTANCES = ("distinct", "reference")
TRANSFORMS = ("math", "reference")


def _check_centres(centres: torch.Tensor) -> None:
    if centres.ndim != 3 or centres.shape[-1] != 3 or centres.shape[1] < 1:
        raise ValueError(f"centres must be (B, G, 3) with G >= 1, got {tuple(centres.shape)}")
    if not centres.is_floating_point():
        raise ValueError(f"centres must be floating point, got {centres.dtype}")
    if not torch.isfinite(centres).all():
        raise ValueError("centres contain NaN or infinite coordinates")


def edge_weights(centres: torch.Tensor, min_distance: MinDistance = "distinct") -> torch.Tensor:
    """(B, G, G) weights of the complete graph on each sample's centres.

    "distinct": w_ij = d_min / max(d_ij, d_min) with d_min the sample's smallest positive distance
    between two different centres. The diagonal is 1 (d_ii = 0 exactly); duplicated centres
    (d_ij = 0, i != j) also weigh 1, as tightly tied as the closest distinct pair instead of
    infinitely; a sample with no two distinct centres (G = 1, or all equal) takes d_min = 1, so
    all its weights are 1.

    "reference": the released code's formula, 1 / (cdist / d_min + I) with d_min the smallest
    nonzero entry of `torch.cdist` over the WHOLE batch, diagonal float error included.
    """
    _check_centres(centres)
    if min_distance == "reference":
        distances = torch.cdist(centres, centres)
        d_min = torch.min(torch.where(distances == 0, torch.full_like(distances, 10.0), distances))
        eye = torch.eye(centres.shape[1], dtype=centres.dtype, device=centres.device)
        return 1.0 / (distances / d_min + eye)
    if min_distance != "distinct":
        raise ValueError(f"min_distance must be one of {MIN_DISTANCES}, got {min_distance!r}")
    # Differences, not cdist: its matmul path leaves float error on the diagonal.
    distances = torch.linalg.vector_norm(centres.unsqueeze(-2) - centres.unsqueeze(-3), dim=-1)
    positive = torch.where(distances > 0, distances, torch.full_like(distances, torch.inf))
    d_min = positive.amin(dim=(-2, -1), keepdim=True)
    d_min = torch.where(torch.isfinite(d_min), d_min, torch.ones_like(d_min))
    return d_min / torch.maximum(distances, d_min)


def graph_laplacian(
    centres: torch.Tensor, normalized: bool = True, min_distance: MinDistance = "distinct"
) -> torch.Tensor:
    """(B, G, G) Laplacian of `edge_weights`: I − D^-½ W D^-½ when normalized, else D − W.

    Degrees include the self-loops, so they are >= 1 and the normalised form is always defined;
    its eigenvalues lie in [0, 2]. The self-loops cancel in D − W.
    """
    weights = edge_weights(centres, min_distance)
    degree = weights.sum(dim=-1)
    if normalized:
        inv_sqrt = degree.rsqrt()
        eye = torch.eye(weights.shape[-1], dtype=weights.dtype, device=weights.device)
        return eye - inv_sqrt.unsqueeze(-1) * weights * inv_sqrt.unsqueeze(-2)
    return torch.diag_embed(degree) - weights


def graph_basis(
    centres: torch.Tensor, normalized: bool = True, min_distance: MinDistance = "distinct"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Graph Fourier basis of each sample: eigenvalues (B, G) ascending, U (B, G, G) columns.

    One batched `torch.linalg.eigh`. Each eigenvector's sign is fixed so that its
    largest-magnitude entry is positive (eigh leaves signs to the solver).
    """
    eigenvalues, basis = torch.linalg.eigh(graph_laplacian(centres, normalized, min_distance))
    peak = basis.abs().argmax(dim=-2, keepdim=True)
    return eigenvalues, basis * basis.gather(-2, peak).sign()


def morton_order(
    centres: torch.Tensor, bits: int = 10, axis_priority: Sequence[int] = (1, 0, 2)
) -> torch.Tensor:
    """(B, G) permutation listing each sample's centres along a Morton (z-order) curve.

    Coordinates are shifted by the sample's minimum (so all are >= 0 and the curve never wraps
    at 0) and quantised into 2^bits cubic cells spanning the longest side of its bounding box;
    the cell indices' bits are interleaved, `axis_priority[0]` most significant within each
    level (y, x, z as in the reference's key), and sorted stably (ties keep index order).
    """
    _check_centres(centres)
    if not 1 <= bits <= 21:
        raise ValueError(f"bits must be in 1..21 (3 * bits must fit a 64-bit key), got {bits}")
    if sorted(axis_priority) != [0, 1, 2]:
        raise ValueError(f"axis_priority must be a permutation of (0, 1, 2), got {tuple(axis_priority)}")
    points = centres.double()
    low = points.amin(dim=1, keepdim=True)
    span = (points.amax(dim=1, keepdim=True) - low).amax(dim=-1, keepdim=True)
    span = torch.where(span > 0, span, torch.ones_like(span))
    cells = 1 << bits
    cell = ((points - low) / span * cells).floor().clamp(0, cells - 1).long()
    key = torch.zeros(cell.shape[:-1], dtype=torch.long, device=cell.device)
    for level in range(bits):
        for rank, axis in enumerate(axis_priority):
            key |= ((cell[..., axis] >> level) & 1) << (3 * level + 2 - rank)
    return torch.argsort(key, dim=-1, stable=True)


def chunk_bounds(num_nodes: int, local_size: int) -> list[tuple[int, int]]:
    """[start, stop) of consecutive chunks of `local_size` nodes; the last one may be smaller."""
    if local_size < 1:
        raise ValueError(f"local_size must be >= 1, got {local_size}")
    return [(start, min(start + local_size, num_nodes)) for start in range(0, num_nodes, local_size)]


def local_graph_basis(
    sorted_centres: torch.Tensor,
    local_size: int = 32,
    normalized: bool = True,
    min_distance: MinDistance = "distinct",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bases of the local graphs: consecutive chunks of `sorted_centres` (B, G, 3).

    Returns eigenvalues (B, G), ascending within each chunk, and the block-diagonal (B, G, G)
    matrix of the chunks' bases, both in the order of `sorted_centres`. All full chunks go
    through one batched eigh; a smaller last chunk through a second.
    """
    batch, num_nodes, _ = sorted_centres.shape
    bounds = chunk_bounds(num_nodes, local_size)
    eigenvalues = sorted_centres.new_zeros(batch, num_nodes)
    block_basis = sorted_centres.new_zeros(batch, num_nodes, num_nodes)
    full = num_nodes // local_size
    groups = [(bounds[:full], local_size), (bounds[full:], num_nodes - full * local_size)]
    for group, size in groups:
        if not group:
            continue
        start, stop = group[0][0], group[-1][1]
        chunks = sorted_centres[:, start:stop].reshape(batch * len(group), size, 3)
        values, vectors = graph_basis(chunks, normalized, min_distance)
        values = values.reshape(batch, len(group), size)
        vectors = vectors.reshape(batch, len(group), size, size)
        for index, (begin, end) in enumerate(group):
            eigenvalues[:, begin:end] = values[:, index]
            block_basis[:, begin:end, begin:end] = vectors[:, index]
    return eigenvalues, block_basis


def gather_nodes(values: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """values (B, G, ...) reordered along dim 1 by order (B, G): out[b, i] = values[b, order[b, i]]."""
    index = order.reshape(*order.shape, *([1] * (values.ndim - 2))).expand_as(values)
    return values.gather(1, index)


@dataclass(frozen=True)
class SpectralBasis:
    """Global and local graph Fourier bases of a batch of patch centres.

    Computed once per sample by `from_centres` and shared by every block's adapter. The local
    bases live in Morton order: `local_basis` is block-diagonal over consecutive chunks of
    `local_size` nodes of `order` (the last chunk may be smaller).
    """

    global_eigenvalues: torch.Tensor  # (B, G), ascending
    global_basis: torch.Tensor  # (B, G, G), eigenvectors as columns, token order
    order: torch.Tensor  # (B, G): order[b, i] is the token at position i of the Morton curve
    inverse_order: torch.Tensor  # (B, G): the position of each token on the curve
    local_eigenvalues: torch.Tensor  # (B, G), Morton order, ascending within each chunk
    local_basis: torch.Tensor  # (B, G, G), block-diagonal, Morton order
    local_size: int

    @property
    def num_nodes(self) -> int:
        return self.global_basis.shape[-1]

    @classmethod
    def from_centres(
        cls,
        centres: torch.Tensor,
        local_size: int = 32,
        normalized: bool = True,
        min_distance: MinDistance = "distinct",
        morton_bits: int = 10,
    ) -> SpectralBasis:
        """Bases of centres (B, G, 3), as constants: no gradient flows into the centres."""
        centres = centres.detach()
        global_eigenvalues, global_basis = graph_basis(centres, normalized, min_distance)
        order = morton_order(centres, morton_bits)
        local_eigenvalues, local_basis = local_graph_basis(
            gather_nodes(centres, order), local_size, normalized, min_distance
        )
        return cls(
            global_eigenvalues=global_eigenvalues,
            global_basis=global_basis,
            order=order,
            inverse_order=torch.argsort(order, dim=-1),
            local_eigenvalues=local_eigenvalues,
            local_basis=local_basis,
            local_size=local_size,
        )


class PCSA(nn.Module):
    """Point Cloud Spectral Adapter for one Transformer block.

    For tokens x (B, T, C) whose last G are the patch tokens (T = G, or 1 + G with a cls token
    first), with h = down(x):

        patch tokens: up(SiLU(h) + global(h) + local(h)) * scale
        leading tokens (cls): up(SiLU(h)) * scale — they are not graph nodes

    where each branch moves h to its spectral domain (f = Uᵀh), adds the shared spectral layer's
    correction f + SiLU(dropout(spectral(LayerNorm(f)))) (one LayerNorm per branch) and moves
    back (Uf), as the released code does. `spectral` and `up` start at zero, so the output is
    exactly zero until training moves them; `down` starts Xavier-uniform.

    `bind(basis)` makes it a block's feed-forward side branch; like the released code, the block
    feeds it the residual stream after the attention branch (before the second LayerNorm).
    """

    def __init__(
        self,
        dim: int = 384,
        rank: int = 36,
        scale: float = 1.0,
        dropout: float = 0.0,
        transform: Transform = "math",
    ):
        super().__init__()
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dim = dim
        self.rank = rank
        self.scale = scale
        self.transform = transform
        self.down = nn.Linear(dim, rank)
        self.global_norm = nn.LayerNorm(rank)
        self.local_norm = nn.LayerNorm(rank)
        self.spectral = nn.Linear(rank, rank)
        self.dropout = nn.Dropout(dropout)
        self.act = nn.SiLU()
        self.up = nn.Linear(rank, dim)
        nn.init.xavier_uniform_(self.down.weight)
        for layer in (self.spectral, self.up):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _to_spectral(self, basis: torch.Tensor, signal: torch.Tensor) -> torch.Tensor:
        return (basis if self.transform == "reference" else basis.mT) @ signal

    def _from_spectral(self, basis: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
        return (basis.mT if self.transform == "reference" else basis) @ spectrum

    def _spectral_branch(self, basis: torch.Tensor, norm: nn.LayerNorm, signal: torch.Tensor) -> torch.Tensor:
        spectrum = self._to_spectral(basis, signal)
        spectrum = spectrum + self.act(self.dropout(self.spectral(norm(spectrum))))
        return self._from_spectral(basis, spectrum)

    def forward(self, x: torch.Tensor, basis: SpectralBasis) -> torch.Tensor:
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"x must be (B, T, {self.dim}), got {tuple(x.shape)}")
        num_nodes = basis.num_nodes
        if x.shape[0] != basis.global_basis.shape[0] or x.shape[1] < num_nodes:
            raise ValueError(
                f"x {tuple(x.shape)} does not fit a basis of {basis.global_basis.shape[0]} samples"
                f" x {num_nodes} nodes (T must be G or more, patch tokens last)"
            )
        hidden = self.down(x)
        nodes = hidden[:, -num_nodes:]
        global_part = self._spectral_branch(basis.global_basis.to(nodes.dtype), self.global_norm, nodes)
        local_part = self._spectral_branch(
            basis.local_basis.to(nodes.dtype), self.local_norm, gather_nodes(nodes, basis.order)
        )
        graph = global_part + gather_nodes(local_part, basis.inverse_order)
        out = self.act(hidden)
        out = torch.cat([out[:, :-num_nodes], out[:, -num_nodes:] + graph], dim=1)
        return self.up(out) * self.scale

    def bind(self, basis: SpectralBasis) -> Callable[[torch.Tensor], torch.Tensor]:
        """This adapter with its basis fixed: the `ffn_side(tokens)` callable of a block."""
        return functools.partial(self, basis=basis)


class SpectralAdapters(nn.ModuleList):
    """One PCSA per Transformer block, all of the same configuration."""

    def __init__(
        self,
        depth: int,
        dim: int = 384,
        rank: int = 36,
        scale: float = 1.0,
        dropout: float = 0.0,
        transform: Transform = "math",
    ):
        super().__init__(PCSA(dim, rank, scale, dropout, transform) for _ in range(depth))

    def bind(self, basis: SpectralBasis) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """The blocks' `ffn_sides`, all sharing one basis."""
        return [adapter.bind(basis) for adapter in self]
