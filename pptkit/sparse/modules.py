"""Sparse layers: convolutions with a backend switch, and feature-wise norm / activation / pooling.

Every convolution owns one weight Parameter of shape (kernel_volume, in_channels, out_channels)
in the canonical offset order of `pptkit.sparse.kernel_map`, so a state_dict is the same
whichever backend runs it. `backend` is "torch" (pure PyTorch, CPU and CUDA) or "minkowski"
(MinkowskiEngine 0.5.4); it is a plain attribute and may be changed after construction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pptkit.sparse import minkowski_backend
from pptkit.sparse.kernel_map import downsample_coords, strided_map, submanifold_map
from pptkit.sparse.tensor import SparseTensor
from pptkit.sparse.torch_backend import single_threaded, sparse_conv

BACKENDS = ("torch", "minkowski")


def available_backends() -> list[str]:
    """["torch"], plus "minkowski" when MinkowskiEngine is importable."""
    return ["torch"] + (["minkowski"] if minkowski_backend.minkowski() is not None else [])


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown sparse backend {backend!r}; expected one of {BACKENDS}")
    if backend == "minkowski":
        minkowski_backend.require_minkowski()
    return backend


class _SparseConvBase(nn.Module):
    """Weight (K, C_in, C_out), optional bias, backend choice; subclasses define the coordinates."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, bias: bool, backend: str):
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.backend = _check_backend(backend)
        self.weight = nn.Parameter(torch.empty(kernel_size**3, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(+-1/sqrt(fan_in)) with fan_in = kernel_volume * in_channels, for weight and bias."""
        bound = 1.0 / math.sqrt(self.weight.shape[0] * self.in_channels)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def _check_input(self, x: SparseTensor) -> None:
        if x.feats.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_channels} input channels, got {x.feats.shape[1]}"
            )

    def _finish(self, feats: Tensor, x: SparseTensor, coords: Tensor, stride: int) -> SparseTensor:
        if self.bias is not None:
            feats = feats + self.bias
        return SparseTensor(feats, coords, stride, context=x.context, condition=x.condition)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, bias={self.bias is not None}, backend={self.backend!r}"
        )


class SubMConv3d(_SparseConvBase):
    """Submanifold convolution: outputs exactly on the input coordinates (odd kernel sizes)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = False, backend: str = "torch"):
        if kernel_size % 2 == 0:
            raise ValueError(f"SubMConv3d needs an odd kernel_size, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, 1, bias, backend)

    def forward(self, x: SparseTensor) -> SparseTensor:
        self._check_input(x)
        if self.backend == "minkowski":
            feats = minkowski_backend.convolution(
                x.feats, self.weight, x.context, x.stride, x.stride, self.kernel_size, 1, transposed=False
            )
        else:
            kmap = x.context.kernel_map(
                (x.stride, self.kernel_size, "subm"),
                lambda: _build(x, lambda: submanifold_map(x.coords, x.stride, self.kernel_size)),
            )
            feats = sparse_conv(x.feats, self.weight, kmap)
        return self._finish(feats, x, x.coords, x.stride)


def _build(on: SparseTensor | Tensor, build):
    """Coordinate / kernel-map construction: single-threaded on CPU (see torch_backend)."""
    device = on.device
    return single_threaded(build) if device.type == "cpu" else build()


def _coarse_coords(x: SparseTensor, conv_stride: int) -> Tensor:
    """The context's coordinates at stride x.stride * conv_stride, created on first use."""
    out_stride = x.stride * conv_stride
    if out_stride not in x.context.strides:
        x.context.register(out_stride, _build(x, lambda: downsample_coords(x.coords, x.stride, conv_stride)))
    return x.context.coords(out_stride)


def _strided_map(context, fine_coords: Tensor, coarse_coords: Tensor, fine_stride: int, kernel_size: int, conv_stride: int):
    return context.kernel_map(
        (fine_stride, kernel_size, f"down{conv_stride}"),
        lambda: _build(fine_coords, lambda: strided_map(fine_coords, coarse_coords, fine_stride, kernel_size, conv_stride)),
    )


class Conv3d(_SparseConvBase):
    """Strided convolution: output stride = stride * input stride, each input coordinate floored
    to the coarser grid (MinkowskiEngine semantics). With stride 1 it equals SubMConv3d."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2, stride: int = 2, bias: bool = False, backend: str = "torch"):
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, backend)
        if stride == 1 and kernel_size % 2 == 0:
            raise ValueError(f"Conv3d with stride 1 needs an odd kernel_size, got {kernel_size}")

    def forward(self, x: SparseTensor) -> SparseTensor:
        self._check_input(x)
        if self.stride == 1:
            out_coords = x.coords
        else:
            out_coords = _coarse_coords(x, self.stride)
        out_stride = x.stride * self.stride
        if self.backend == "minkowski":
            feats = minkowski_backend.convolution(
                x.feats, self.weight, x.context, x.stride, out_stride, self.kernel_size, self.stride, transposed=False
            )
        elif self.stride == 1:
            kmap = x.context.kernel_map(
                (x.stride, self.kernel_size, "subm"),
                lambda: _build(x, lambda: submanifold_map(x.coords, x.stride, self.kernel_size)),
            )
            feats = sparse_conv(x.feats, self.weight, kmap)
        else:
            kmap = _strided_map(x.context, x.coords, out_coords, x.stride, self.kernel_size, self.stride)
            feats = sparse_conv(x.feats, self.weight, kmap)
        return self._finish(feats, x, out_coords, out_stride)


class ConvTranspose3d(_SparseConvBase):
    """Transposed strided convolution back onto the finer coordinates (stride x.stride // stride)
    that produced x, looked up in x.context (MinkowskiEngine's generative=False behaviour)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 2, stride: int = 2, bias: bool = False, backend: str = "torch"):
        if stride < 2:
            raise ValueError(f"ConvTranspose3d needs stride >= 2, got {stride}")
        super().__init__(in_channels, out_channels, kernel_size, stride, bias, backend)

    def forward(self, x: SparseTensor) -> SparseTensor:
        self._check_input(x)
        if x.stride % self.stride:
            raise ValueError(f"cannot upsample a stride-{x.stride} tensor by {self.stride}")
        out_stride = x.stride // self.stride
        out_coords = x.context.coords(out_stride)
        if self.backend == "minkowski":
            feats = minkowski_backend.convolution(
                x.feats, self.weight, x.context, x.stride, out_stride, self.kernel_size, self.stride, transposed=True
            )
        else:
            kmap = _strided_map(x.context, out_coords, x.coords, out_stride, self.kernel_size, self.stride)
            feats = sparse_conv(x.feats, self.weight, kmap.transposed)
        return self._finish(feats, x, out_coords, out_stride)


class BatchNorm(nn.BatchNorm1d):
    """nn.BatchNorm1d over the features of a SparseTensor (the state_dict is BatchNorm1d's)."""

    def __init__(self, num_features: int, eps: float = 1e-3, momentum: float = 0.01):
        super().__init__(num_features, eps=eps, momentum=momentum)

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(super().forward(x.feats))


class ReLU(nn.ReLU):
    """Element-wise ReLU on the features."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace(F.relu(x.feats, inplace=self.inplace))


class GlobalPool(nn.Module):
    """Average or max of the features of each batch entry -> (batch_size, C)."""

    def __init__(self, mode: str = "avg"):
        super().__init__()
        if mode not in ("avg", "max"):
            raise ValueError(f'GlobalPool mode must be "avg" or "max", got {mode!r}')
        self.mode = mode

    def forward(self, x: SparseTensor) -> Tensor:
        batch = x.coords[:, 0].to(torch.int64)
        size = (x.batch_size, x.feats.shape[1])
        if self.mode == "max":
            index = batch[:, None].expand_as(x.feats)
            return x.feats.new_zeros(size).scatter_reduce(0, index, x.feats, "amax", include_self=False)
        total = x.feats.new_zeros(size).index_add(0, batch, x.feats)
        count = torch.bincount(batch, minlength=size[0]).clamp_(min=1).to(x.feats.dtype)
        return total / count[:, None]

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
