"""Pure-PyTorch sparse convolution: gather -> matmul -> scatter-add per kernel offset.

The autograd function saves only the input features, the weight and the kernel map;
backward recomputes the per-offset gathers instead of keeping them alive. Gathers and
products go into two scratch buffers sized for the largest offset, so a layer allocates
them once rather than once per offset. The identity offset (centre of a submanifold
kernel) is a plain matrix product with no gather or scatter.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

from pptkit.sparse.kernel_map import KernelMap


def _apply(feats: Tensor, weight: Tensor, kmap: KernelMap, transpose_weight: bool) -> Tensor:
    """sum_k scatter(out_idx[k], gather(in_idx[k], feats) @ W[k]) (W[k]^T when transposing)."""
    out_channels = weight.shape[1] if transpose_weight else weight.shape[2]
    if kmap.identity is not None:
        w = weight[kmap.identity]
        out = torch.mm(feats, w.t() if transpose_weight else w)
    else:
        out = feats.new_zeros(kmap.num_out, out_channels)
    active = kmap.active
    if not active:
        return out
    max_pairs = kmap.max_pairs
    gathered = feats.new_empty(max_pairs, feats.shape[1])
    product = feats.new_empty(max_pairs, out_channels)
    for k in active:
        src = kmap.in_idx[k]
        n = src.numel()
        g = gathered[:n]
        p = product[:n]
        torch.index_select(feats, 0, src, out=g)
        torch.mm(g, weight[k].t() if transpose_weight else weight[k], out=p)
        out.index_put_((kmap.out_idx[k],), p, accumulate=True)
    return out


def _weight_grad(feats: Tensor, grad_out: Tensor, kmap: KernelMap, weight_shape: torch.Size) -> Tensor:
    """dL/dW[k] = gather(in_idx[k], feats)^T @ gather(out_idx[k], grad_out)."""
    grad_weight = feats.new_zeros(weight_shape)
    if kmap.identity is not None:
        torch.mm(feats.t(), grad_out, out=grad_weight[kmap.identity])
    active = kmap.active
    if not active:
        return grad_weight
    max_pairs = kmap.max_pairs
    gathered_in = feats.new_empty(max_pairs, feats.shape[1])
    gathered_out = grad_out.new_empty(max_pairs, grad_out.shape[1])
    for k in active:
        n = kmap.in_idx[k].numel()
        gi = gathered_in[:n]
        go = gathered_out[:n]
        torch.index_select(feats, 0, kmap.in_idx[k], out=gi)
        torch.index_select(grad_out, 0, kmap.out_idx[k], out=go)
        torch.mm(gi.t(), go, out=grad_weight[k])
    return grad_weight


class SparseConvFunction(Function):
    """out = sparse_conv(feats, weight (K, C_in, C_out), kernel map); differentiable in both."""

    @staticmethod
    def forward(ctx, feats: Tensor, weight: Tensor, kmap: KernelMap) -> Tensor:  # type: ignore[override]
        feats = feats.contiguous()
        ctx.save_for_backward(feats, weight)
        ctx.kmap = kmap
        return _apply(feats, weight, kmap, transpose_weight=False)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        feats, weight = ctx.saved_tensors
        kmap: KernelMap = ctx.kmap
        grad_out = grad_out.contiguous()
        grad_feats = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_feats = _apply(grad_out, weight, kmap.transposed, transpose_weight=True)
        if ctx.needs_input_grad[1]:
            grad_weight = _weight_grad(feats, grad_out, kmap, weight.shape)
        return grad_feats, grad_weight, None


def sparse_conv(feats: Tensor, weight: Tensor, kmap: KernelMap) -> Tensor:
    """Apply a kernel map with weight (K, C_in, C_out) to features (num_in, C_in)."""
    return SparseConvFunction.apply(feats, weight, kmap)
