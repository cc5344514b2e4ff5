"""Pure-PyTorch sparse convolution: gather -> matmul -> scatter-add per kernel offset.

The autograd function saves only the input features, the weight and the kernel map;
backward recomputes the per-offset gathers instead of keeping them alive, and gathers each
offset's output-gradient rows once for both the input and the weight gradient. The identity
offset (centre of a submanifold kernel) is a plain matrix product with no gather or scatter.
Each worker gathers and multiplies into two scratch buffers sized for its largest offset.

On CPU the offsets are split into balanced groups, one per intra-op thread, and each group
runs single-threaded in its own worker thread with its own output buffer (summed at the end).
This costs one join per layer instead of one OpenMP barrier per gather / GEMM / scatter,
which matters on small machines whose cores are shared: there, a barrier waits for the
descheduled thread and thousands of small parallel ops per network pass stall for whole
scheduler slices. On CUDA everything runs in order on the current stream.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import torch
from torch import Tensor
from torch.autograd import Function

from pptkit.sparse.kernel_map import KernelMap

T = TypeVar("T")
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_CPU_WORKERS: int | None = None


def set_cpu_workers(workers: int | None) -> None:
    """Worker threads for CPU sparse convolutions; None (default) follows torch.get_num_threads().

    Setting torch.set_num_threads(1) and set_cpu_workers(2) keeps every other op single-threaded
    (no OpenMP barriers at all) while convolutions still use two cores.
    """
    global _CPU_WORKERS
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _CPU_WORKERS = workers


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < workers:
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pptkit-sparse")
        return _POOL


def single_threaded(build: Callable[[], T]) -> T:
    """Run `build` (e.g. a kernel-map search: many small ops) with one intra-op thread, then restore.

    Small parallel ops pay an OpenMP barrier each, which stalls on shared cores; run serially
    they cost less than they would gain.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        return build()
    torch.set_num_threads(1)
    try:
        return build()
    finally:
        torch.set_num_threads(threads)


def _groups(kmap: KernelMap, workers: int) -> list[list[int]]:
    """Active offsets split into `workers` groups of about equal pair counts (identity counts N)."""
    sizes = {k: kmap.in_idx[k].numel() for k in kmap.active}
    if kmap.identity is not None:
        sizes[kmap.identity] = kmap.num_in
    groups: list[list[int]] = [[] for _ in range(max(1, min(workers, len(sizes))))]
    loads = [0] * len(groups)
    for k in sorted(sizes, key=sizes.__getitem__, reverse=True):
        i = loads.index(min(loads))
        groups[i].append(k)
        loads[i] += sizes[k]
    return groups


def _run_groups(task, kmap: KernelMap, device: torch.device) -> list:
    """Run task(offsets) per group: in worker threads on CPU (single-threaded each), else inline."""
    if device.type != "cpu":
        workers = 1
    else:
        workers = _CPU_WORKERS if _CPU_WORKERS is not None else torch.get_num_threads()
    groups = _groups(kmap, workers)
    if len(groups) == 1:
        return [task(groups[0])]
    threads = torch.get_num_threads()

    def single_threaded(offsets):
        torch.set_num_threads(1)
        with torch.no_grad():  # grad mode is per thread; the caller is inside autograd already
            return task(offsets)

    try:
        return list(_pool(len(groups)).map(single_threaded, groups))
    finally:
        torch.set_num_threads(threads)


def _scratch(kmap: KernelMap, offsets: list[int], like: Tensor, *widths: int) -> list[Tensor]:
    rows = max((kmap.in_idx[k].numel() for k in offsets if k != kmap.identity), default=0)
    return [like.new_empty(rows, w) for w in widths]


def _forward(feats: Tensor, weight: Tensor, kmap: KernelMap) -> Tensor:
    """out = sum_k scatter(out_idx[k], gather(in_idx[k], feats) @ W[k])."""
    c_in, c_out = weight.shape[1], weight.shape[2]

    def task(offsets: list[int]) -> Tensor:
        if kmap.identity in offsets:
            out = torch.mm(feats, weight[kmap.identity])
        else:
            out = feats.new_zeros(kmap.num_out, c_out)
        gathered, product = _scratch(kmap, offsets, feats, c_in, c_out)
        for k in offsets:
            if k == kmap.identity:
                continue
            n = kmap.in_idx[k].numel()
            torch.index_select(feats, 0, kmap.in_idx[k], out=gathered[:n])
            torch.mm(gathered[:n], weight[k], out=product[:n])
            out.index_add_(0, kmap.out_idx[k], product[:n])
        return out

    if not kmap.active and kmap.identity is None:
        return feats.new_zeros(kmap.num_out, c_out)
    parts = _run_groups(task, kmap, feats.device)
    out = parts[0]
    for part in parts[1:]:
        out += part
    return out


def _backward(feats: Tensor, weight: Tensor, grad_out: Tensor, kmap: KernelMap, need_feats: bool, need_weight: bool):
    """dL/dfeats = sum_k scatter(in_idx[k], gather(out_idx[k], g) @ W[k]^T);
    dL/dW[k] = gather(in_idx[k], feats)^T @ gather(out_idx[k], g)."""
    c_in, c_out = weight.shape[1], weight.shape[2]
    grad_weight = torch.zeros_like(weight) if need_weight else None

    def task(offsets: list[int]) -> Tensor | None:
        grad_feats = None
        if need_feats:
            if kmap.identity in offsets:
                grad_feats = torch.mm(grad_out, weight[kmap.identity].t())
            else:
                grad_feats = feats.new_zeros(kmap.num_in, c_in)
        if need_weight and kmap.identity in offsets:
            torch.mm(feats.t(), grad_out, out=grad_weight[kmap.identity])
        gathered_in, gathered_out, product = _scratch(kmap, offsets, feats, c_in, c_out, c_in)
        for k in offsets:
            if k == kmap.identity:
                continue
            n = kmap.in_idx[k].numel()
            go = gathered_out[:n]
            torch.index_select(grad_out, 0, kmap.out_idx[k], out=go)
            if need_feats:
                torch.mm(go, weight[k].t(), out=product[:n])
                grad_feats.index_add_(0, kmap.in_idx[k], product[:n])
            if need_weight:
                torch.index_select(feats, 0, kmap.in_idx[k], out=gathered_in[:n])
                torch.mm(gathered_in[:n].t(), go, out=grad_weight[k])
        return grad_feats

    if not kmap.active and kmap.identity is None:
        return (feats.new_zeros(feats.shape) if need_feats else None), grad_weight
    parts = _run_groups(task, kmap, feats.device)
    grad_feats = parts[0]
    if need_feats:
        for part in parts[1:]:
            grad_feats += part
    return grad_feats, grad_weight


class SparseConvFunction(Function):
    """out = sparse_conv(feats, weight (K, C_in, C_out), kernel map); differentiable in both."""

    @staticmethod
    def forward(ctx, feats: Tensor, weight: Tensor, kmap: KernelMap) -> Tensor:  # type: ignore[override]
        feats = feats.contiguous()
        ctx.save_for_backward(feats, weight)
        ctx.kmap = kmap
        return _forward(feats, weight, kmap)

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        feats, weight = ctx.saved_tensors
        grad_feats, grad_weight = _backward(
            feats, weight, grad_out.contiguous(), ctx.kmap, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        return grad_feats, grad_weight, None


def sparse_conv(feats: Tensor, weight: Tensor, kmap: KernelMap) -> Tensor:
    """Apply a kernel map with weight (K, C_in, C_out) to features (num_in, C_in)."""
    return SparseConvFunction.apply(feats, weight, kmap)
