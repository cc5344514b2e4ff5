"""Object classifier on the point-patch Transformer, optionally tuned with PointGST adapters.

points (B, N, 3) -> `PointTransformerEncoder` (patches, tokens, blocks) -> [cls ‖ max-pool]
(B, 2C) -> `ClassificationHead` -> logits (B, K). With `adapters`, every block gets a PCSA
beside its feed-forward branch; the graph bases of the patch centres are computed once per
sample (`SpectralBasis.from_centres`) and shared by all blocks.

Frozen normalisation: a BatchNorm whose parameters are all frozen also keeps its running
statistics — `train()` leaves it in eval mode. So when the backbone is frozen (PointGST,
linear probing) its mini-PointNet normalises exactly as it did after pretraining, instead of
drifting with the new data as in the reference code.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pptkit.models.point_transformer import PointTransformerEncoder, cls_max_pool
from pptkit.models.spectral_adapter import MinDistance, SpectralAdapters, SpectralBasis


class ClassificationHead(nn.Module):
    """The Point-MAE / PointGST head: (Linear -> BatchNorm -> ReLU -> Dropout) per hidden width,
    then a Linear to the classes. PyTorch's default initialisation, as the reference leaves it
    when it loads a pretrained backbone."""

    def __init__(self, in_channels: int, num_classes: int, hidden: Sequence[int] = (256, 256),
                 dropout: float = 0.5):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        layers: list[nn.Module] = []
        width = in_channels
        for size in hidden:
            layers += [nn.Linear(width, size), nn.BatchNorm1d(size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.mlp(features)


class PointTransformerClassifier(nn.Module):
    """Encoder + head, with one PCSA per block when `adapters` is given.

    The graph options (`local_size`, `normalized`, `min_distance`, `morton_bits`) are those of
    `SpectralBasis.from_centres`; they are unused without adapters.
    """

    def __init__(self, encoder: PointTransformerEncoder, num_classes: int, head_hidden: Sequence[int] = (256, 256),
                 head_dropout: float = 0.5, adapters: SpectralAdapters | None = None, local_size: int = 32,
                 normalized: bool = True, min_distance: MinDistance = "distinct", morton_bits: int = 10):
        super().__init__()
        if adapters is not None and len(adapters) != len(encoder.blocks):
            raise ValueError(f"{len(adapters)} adapters for {len(encoder.blocks)} blocks")
        self.encoder = encoder
        self.adapters = adapters
        self.head = ClassificationHead(2 * encoder.embed_dim, num_classes, head_hidden, head_dropout)
        self.local_size = local_size
        self.normalized = normalized
        self.min_distance = min_distance
        self.morton_bits = morton_bits

    def spectral_basis(self, centres: Tensor) -> SpectralBasis:
        """The global and local graph bases of patch centres (B, G, 3), in full precision even
        under autocast (eigh has no half-precision kernel)."""
        with torch.autocast(centres.device.type, enabled=False):
            return SpectralBasis.from_centres(centres, self.local_size, self.normalized, self.min_distance,
                                              self.morton_bits)

    def features(self, points: Tensor) -> Tensor:
        """[cls ‖ max-pool] (B, 2C) of the (adapted) encoder."""
        patches, centres = self.encoder.group(points)
        sides = None if self.adapters is None else self.adapters.bind(self.spectral_basis(centres))
        return cls_max_pool(self.encoder.forward_tokens(self.encoder.embed(patches), centres, sides))

    def forward(self, points: Tensor) -> Tensor:
        """points (B, N, 3) -> logits (B, num_classes)."""
        return self.head(self.features(points))

    def train(self, mode: bool = True) -> PointTransformerClassifier:
        """Set train / eval mode; a BatchNorm without trainable parameters stays in eval mode."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in module.parameters(recurse=False)):
                module.eval()
        return self
