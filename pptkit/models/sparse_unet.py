"""Sparse-convolution UNets: Pointcept's SpUNet-v1m1 layout and the MinkowskiEngine MinkUNets.

Both are the same graph: a k=5 submanifold stem, four encoder stages (stride-2 conv, then
BasicBlocks), four decoder stages (stride-2 transposed conv back to the encoder's coordinates,
concatenation with the encoder skip at that stride, then BasicBlocks) and an optional linear head.
They differ only in where the encoder changes channels (see ``down_changes_channels``).

Normalization is a factory argument so joint training can swap in prompt-driven normalization:
every norm layer is called with the SparseTensor itself, whose ``condition`` rides unchanged
through every op here (tensors are only ever derived with ``.replace``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Literal, Sequence

import torch
from torch import nn

from pptkit.sparse import BatchNorm, Conv3d, ConvTranspose3d, ReLU, SparseTensor, SubMConv3d

NormFactory = Callable[[int], nn.Module]

SPUNET_CHANNELS = (32, 64, 128, 256, 256, 128, 96, 96)
SPUNET_LAYERS = (2, 3, 4, 6, 2, 2, 2, 2)


@dataclass
class UNetOutput:
    """Per-voxel features (``out_channels`` wide) and, when the net has a head, per-voxel logits."""

    feats: SparseTensor
    logits: torch.Tensor | None


def to_points(voxel_values: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
    """Per-original-point values from per-voxel ones: ``inverse[i]`` is point i's voxel row
    (as returned by ``sparse_collate``), so ``to_points(out.logits, inverse)`` gives point logits."""
    return voxel_values[inverse]


class ConvNormReLU(nn.Sequential):
    """A sparse conv module followed by norm and ReLU (stem, down and up steps)."""

    def __init__(self, conv: nn.Module, out_channels: int, norm_layer: NormFactory) -> None:
        super().__init__()
        self.conv = conv
        self.norm = norm_layer(out_channels)
        self.act = ReLU()


class Projection(nn.Sequential):
    """1x1 submanifold conv + norm: the residual branch of a BasicBlock that changes channels."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: NormFactory, backend: str) -> None:
        super().__init__()
        self.conv = SubMConv3d(in_channels, out_channels, kernel_size=1, bias=False, backend=backend)
        self.norm = norm_layer(out_channels)


class BasicBlock(nn.Module):
    """Two 3x3x3 submanifold convs with norm and ReLU plus a residual (projected when channels change)."""

    def __init__(self, in_channels: int, out_channels: int, norm_layer: NormFactory, backend: str = "torch") -> None:
        super().__init__()
        self.conv1 = SubMConv3d(in_channels, out_channels, kernel_size=3, bias=False, backend=backend)
        self.norm1 = norm_layer(out_channels)
        self.act1 = ReLU()
        self.conv2 = SubMConv3d(out_channels, out_channels, kernel_size=3, bias=False, backend=backend)
        self.norm2 = norm_layer(out_channels)
        self.shortcut = (
            nn.Identity() if in_channels == out_channels
            else Projection(in_channels, out_channels, norm_layer, backend)
        )
        self.act2 = ReLU()

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        residual = self.shortcut(x)
        return self.act2(out.replace(out.feats + residual.feats))


def make_stage(in_channels: int, out_channels: int, depth: int, norm_layer: NormFactory, backend: str) -> nn.Sequential:
    """``depth`` BasicBlocks; the first maps ``in_channels`` to ``out_channels``."""
    return nn.Sequential(*(
        BasicBlock(in_channels if i == 0 else out_channels, out_channels, norm_layer, backend)
        for i in range(depth)
    ))


def concat_skip(up: SparseTensor, skip: SparseTensor) -> SparseTensor:
    """Channel-concatenate a decoder tensor with the encoder skip on the same coordinates."""
    assert up.coords is skip.coords or torch.equal(up.coords, skip.coords), \
        "decoder and skip tensors must share coordinates (same row order)"
    return skip.replace(torch.cat([up.feats, skip.feats], dim=1))


class SparseUNet(nn.Module):
    """Four-level sparse UNet (Pointcept SpUNet-v1m1 layout by default).

    channels[0:4] / layers[0:4] are the encoder stages (strides 2, 4, 8, 16), channels[4:8] /
    layers[4:8] the decoder stages (strides 8, 4, 2, 1). ``down_changes_channels``: True (SpUNet)
    lets each stride-2 conv map to its stage's channels; False (MinkUNet) keeps the channels
    through the stride-2 conv and lets the stage's first BasicBlock change them.
    ``num_classes=0`` builds no head: the output then carries features only.
    ``conv_init="trunc_normal"`` initialises every sparse conv weight and the head from a normal
    of std 0.02 truncated at ±2 (absolute, as timm's default: in effect untruncated; biases 0),
    as Pointcept's SpUNet; "uniform" keeps each layer's fan-in uniform default.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_channels: int = 32,
        channels: Sequence[int] = SPUNET_CHANNELS,
        layers: Sequence[int] = SPUNET_LAYERS,
        norm_layer: NormFactory = partial(BatchNorm, eps=1e-3, momentum=0.01),
        backend: str = "torch",
        stem_kernel: int = 5,
        down_changes_channels: bool = True,
        conv_init: Literal["trunc_normal", "uniform"] = "trunc_normal",
    ) -> None:
        super().__init__()
        if len(channels) != 8 or len(layers) != 8:
            raise ValueError(f"channels and layers need 8 entries each, got {len(channels)} and {len(layers)}")
        if min(layers) < 1:
            raise ValueError(f"every stage needs at least one block, got layers={tuple(layers)}")
        self.out_channels = channels[-1]
        self.stem = ConvNormReLU(
            SubMConv3d(in_channels, base_channels, kernel_size=stem_kernel, bias=False, backend=backend),
            base_channels, norm_layer,
        )
        self.down = nn.ModuleList()
        self.enc = nn.ModuleList()
        skip_channels = [base_channels]
        width = base_channels
        for stage in range(4):
            down_width = channels[stage] if down_changes_channels else width
            self.down.append(ConvNormReLU(
                Conv3d(width, down_width, kernel_size=2, stride=2, bias=False, backend=backend),
                down_width, norm_layer,
            ))
            self.enc.append(make_stage(down_width, channels[stage], layers[stage], norm_layer, backend))
            width = channels[stage]
            skip_channels.append(width)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for stage in range(4):
            out = channels[4 + stage]
            skip = skip_channels[3 - stage]
            self.up.append(ConvNormReLU(
                ConvTranspose3d(width, out, kernel_size=2, stride=2, bias=False, backend=backend),
                out, norm_layer,
            ))
            self.dec.append(make_stage(out + skip, out, layers[4 + stage], norm_layer, backend))
            width = out
        self.head = nn.Linear(width, num_classes) if num_classes > 0 else None
        if conv_init == "trunc_normal":  # convs and head only: norm layers keep their own init
            convs = [m for m in self.modules() if isinstance(m, (SubMConv3d, Conv3d, ConvTranspose3d))]
            for module in convs + ([self.head] if self.head is not None else []):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: SparseTensor) -> UNetOutput:
        x = self.stem(x)
        skips = [x]
        for down, enc in zip(self.down, self.enc):
            x = enc(down(x))
            skips.append(x)
        skips.pop()  # the deepest encoder output is the decoder's input, not a skip
        for up, dec in zip(self.up, self.dec):
            x = dec(concat_skip(up(x), skips.pop()))
        logits = self.head(x.feats) if self.head is not None else None
        return UNetOutput(feats=x, logits=logits)


def _minkunet_kwargs(layers: tuple[int, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """MinkowskiEngine zoo defaults (INIT_DIM 32, PLANES as SpUNet, ME BatchNorm eps 1e-5 / momentum 0.1)."""
    defaults: dict[str, Any] = dict(
        base_channels=32, channels=SPUNET_CHANNELS, layers=layers, stem_kernel=5,
        norm_layer=partial(BatchNorm, eps=1e-5, momentum=0.1), down_changes_channels=False,
    )
    return {**defaults, **kwargs}


class MinkUNet14(SparseUNet):
    """MinkowskiEngine MinkUNet14: one BasicBlock per stage (about 11.6M parameters for 3 -> 20)."""

    def __init__(self, in_channels: int, num_classes: int, **kwargs: Any) -> None:
        super().__init__(in_channels, num_classes, **_minkunet_kwargs((1,) * 8, kwargs))


class MinkUNet18(SparseUNet):
    """MinkowskiEngine MinkUNet18: two BasicBlocks per stage (about 21.7M parameters for 3 -> 20)."""

    def __init__(self, in_channels: int, num_classes: int, **kwargs: Any) -> None:
        super().__init__(in_channels, num_classes, **_minkunet_kwargs((2,) * 8, kwargs))


class MinkUNet34(SparseUNet):
    """MinkowskiEngine MinkUNet34 (ResNet-34 encoder depths; about 37.9M parameters for 3 -> 20)."""

    def __init__(self, in_channels: int, num_classes: int, **kwargs: Any) -> None:
        super().__init__(in_channels, num_classes, **_minkunet_kwargs((2, 3, 4, 6, 2, 2, 2, 2), kwargs))
