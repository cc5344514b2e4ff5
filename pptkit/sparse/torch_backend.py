"""Pure-PyTorch sparse convolution: gather -> matmul -> scatter-add per kernel offset.

out[o] = sum over the pairs (i, o) of each offset k of feats[i] @ W[k]. The autograd function
saves only the input features, the weight and the kernel map; backward recomputes the gathers
instead of keeping per-offset copies alive. The identity offset (centre of a submanifold
kernel) is a plain matrix product with no gather or scatter.

Work is split so that parallel workers never write to the same memory:
- output rows (of the forward pass, and of the input gradient, which is a forward pass over
  the transposed map with W[k]^T) are cut into contiguous ranges of about equal pair counts.
  Kernel maps keep each offset's pairs sorted by output row, so a range owns a contiguous
  slice of every offset, and each worker scatters into its own rows of the one output;
- the weight gradient follows the input-gradient split: each worker adds the terms of its
  rows into its own (K, C_in, C_out) partial sum, re-using the output-gradient rows it has
  gathered for the input gradient; the partial sums are added in worker order.
Every feature row sums its terms in the same order (identity, then offsets in canonical
order) whatever the number of workers. Pairs go through in chunks: on CPU of at most
`CPU_CHUNK_ELEMENTS` values per scratch buffer, small enough that a chunk's gathered rows are
still in the core's L2 cache when the GEMM and the scatter read them (15-20% faster per
full-resolution convolution than 8 MB chunks here), and scratch memory stays small whatever
the scene size; on a GPU, chunks of `GPU_CHUNK_ELEMENTS` keep kernel launches few. Outputs and
scratch are allocated by the calling thread: memory freed by worker threads would return to
per-thread malloc arenas and stay resident.

On CPU the workers are threads of a small pool, each running torch single-threaded: one join
per convolution instead of one OpenMP barrier per gather / GEMM / scatter, which matters on
small machines whose cores are shared (a barrier waits for a descheduled thread, and the
thousands of small parallel ops of a network pass stall for whole scheduler slices). A calling
thread that runs torch single-threaded itself is one of the workers (N workers: N - 1 pool
threads). Pool threads run their shares in the caller's inference and grad modes, set their
thread count once when they start (torch.set_num_threads is process-wide, so sparse_conv never
calls it), and a forked child starts a pool of its own. On CUDA everything runs in order on the
current stream.
"""

from __future__ import annotations

import bisect
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from functools import partial
from typing import Callable, TypeVar

import torch
from torch import Tensor
from torch.autograd import Function

from pptkit.sparse.kernel_map import KernelMap

T = TypeVar("T")
CPU_CHUNK_ELEMENTS = 1 << 17  # values per scratch buffer: 512 KB in float32
GPU_CHUNK_ELEMENTS = 1 << 24
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()
_CPU_WORKERS: int | None = None


def set_cpu_workers(workers: int | None) -> None:
    """Worker threads for CPU sparse convolutions; None (default) follows torch.get_num_threads().

    Setting torch.set_num_threads(1) and set_cpu_workers(2) keeps every other op single-threaded
    (no OpenMP barriers at all) while convolutions still use two cores: the calling thread and
    one pool thread.
    """
    global _CPU_WORKERS
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    _CPU_WORKERS = workers


def _workers(device: torch.device) -> int:
    if device.type != "cpu":
        return 1
    return _CPU_WORKERS if _CPU_WORKERS is not None else torch.get_num_threads()


def _forget_pool_after_fork() -> None:
    """In a forked child (e.g. a DataLoader worker) the pool's threads do not exist: drop the pool,
    and the lock a parent thread may have held, so the child starts a pool of its own."""
    global _POOL, _POOL_LOCK
    _POOL = None
    _POOL_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _pool(threads: int) -> ThreadPoolExecutor:
    """The shared pool, replaced by a larger one when it has fewer than `threads` threads."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers < threads:
            _POOL = _start_pool(threads)
        return _POOL


def _one_thread() -> None:
    """Set this thread to one intra-op thread, after torch's lazy set-up of the thread, which would
    otherwise set it to the default count on the thread's first parallel op."""
    torch.get_num_threads()
    torch.set_num_threads(1)


def _start_pool(threads: int) -> ThreadPoolExecutor:
    """A pool whose threads set torch to one intra-op thread once, as they start.

    torch.set_num_threads also sets the count that threads started later begin with; so once
    every pool thread has set its own (they meet at a barrier), the calling thread sets that
    default back to its own count. sparse_conv itself never calls torch.set_num_threads.
    """
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pptkit-sparse", initializer=_one_thread)
    started = threading.Barrier(threads + 1)
    for _ in range(threads):  # no thread is idle before all have started, so each task starts one
        pool.submit(started.wait)
    try:
        started.wait()
    except BaseException:  # e.g. Ctrl-C: release the threads, or they would block the exit
        started.abort()
        raise
    torch.set_num_threads(torch.get_num_threads())
    return pool


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


def _in_modes(inference: bool, grad: bool, task: Callable[[], None]) -> None:
    """Run `task` in the given inference and grad modes (both are per thread)."""
    with torch.inference_mode(inference), torch.set_grad_enabled(grad):
        task()


def _run(tasks: list[Callable[[], None]], device: torch.device) -> None:
    """Run the tasks: on CPU in pool threads (single-threaded each, in the caller's inference and
    grad modes, so that they may write into the caller's inference tensors) and, when it runs torch
    single-threaded too, the first one on this thread; elsewhere in order here.

    A calling thread with more intra-op threads waits instead: its share's ops would start OpenMP
    teams beside the pool threads, more threads than cores.
    """
    if len(tasks) == 1 or device.type != "cpu":
        for task in tasks:
            task()
        return
    here = tasks[:1] if torch.get_num_threads() == 1 else []
    modes = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())
    pool = _pool(len(tasks) - len(here))
    futures = []
    try:
        for task in tasks[len(here):]:
            futures.append(pool.submit(_in_modes, *modes, task))
        for task in here:
            task()
    finally:
        wait(futures)  # even when one fails, no task may still write into the buffers after this
    for future in futures:
        future.result()


def _row_ranges(kmap: KernelMap, parts: int) -> list[tuple[int, int]]:
    """Up to `parts` contiguous output-row ranges with about equal pair counts, as (start, end)
    indices into `kmap.split_points` (the candidate boundaries)."""
    _, _, below = kmap.split_points
    last = len(below) - 1
    cuts = [0]
    for part in range(1, parts):
        cuts.append(max(cuts[-1], bisect.bisect_left(below, below[-1] * part / parts)))
    cuts.append(last)
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a] or [(0, last)]


def _scratch(kmap: KernelMap, like: Tensor, width: int, count: int) -> tuple[list[Tensor], int]:
    """`count` flat scratch buffers for chunks of up to `rows` pairs of up to `width` channels."""
    elements = CPU_CHUNK_ELEMENTS if like.device.type == "cpu" else GPU_CHUNK_ELEMENTS
    rows = max(1, min(kmap.max_pairs, elements // max(width, 1)))
    return [like.new_empty(rows * width) for _ in range(count)], rows


def _chunks(starts: list[int], span: tuple[int, int], chunk: int):
    """(begin, stop) slices of at most `chunk` pairs covering one offset's pairs in rows `span`."""
    end = starts[span[1]]
    for begin in range(starts[span[0]], end, chunk):
        yield begin, min(begin + chunk, end)


def _convolve_rows(
    out: Tensor, feats: Tensor, weight: Tensor, kmap: KernelMap, span: tuple[int, int], scratch: tuple
) -> None:
    """Fill the rows `span` (indices into kmap.split_points) of out = sparse_conv(feats, weight)."""
    rows, starts, _ = kmap.split_points
    first, last = rows[span[0]], rows[span[1]]
    c_in, c_out = weight.shape[1], weight.shape[2]
    (gather_buf, product_buf), chunk = scratch
    if kmap.identity is not None:
        torch.mm(feats[first:last], weight[kmap.identity], out=out[first:last])
    else:
        out[first:last].zero_()
    for k in kmap.active:
        for begin, stop in _chunks(starts[k], span, chunk):
            n = stop - begin
            gathered = gather_buf[: n * c_in].view(n, c_in)
            product = product_buf[: n * c_out].view(n, c_out)
            torch.index_select(feats, 0, kmap.in_idx[k][begin:stop], out=gathered)
            torch.mm(gathered, weight[k], out=product)
            out.index_add_(0, kmap.out_idx[k][begin:stop], product)


def _backward_rows(
    grad_feats: Tensor | None,
    grad_weight: Tensor | None,
    feats: Tensor,
    weight: Tensor,
    grad_out: Tensor,
    transposed: KernelMap,
    span: tuple[int, int],
    scratch: tuple,
) -> None:
    """Input-gradient rows `span` (indices into transposed.split_points) and these rows' share of
    the weight gradient, added to `grad_weight`. Each chunk of output-gradient rows is gathered
    once and serves both."""
    rows, starts, _ = transposed.split_points
    first, last = rows[span[0]], rows[span[1]]
    c_in, c_out = weight.shape[1], weight.shape[2]
    (grad_buf, feats_buf, product_buf), chunk = scratch
    if transposed.identity is not None:
        if grad_feats is not None:
            torch.mm(grad_out[first:last], weight[transposed.identity].t(), out=grad_feats[first:last])
        if grad_weight is not None:
            grad_weight[transposed.identity].addmm_(feats[first:last].t(), grad_out[first:last])
    elif grad_feats is not None:
        grad_feats[first:last].zero_()
    for k in transposed.active:  # transposed offset k holds offset k's pairs as (output row, input row)
        for begin, stop in _chunks(starts[k], span, chunk):
            n = stop - begin
            gathered_grad = grad_buf[: n * c_out].view(n, c_out)
            torch.index_select(grad_out, 0, transposed.in_idx[k][begin:stop], out=gathered_grad)
            if grad_feats is not None:
                product = product_buf[: n * c_in].view(n, c_in)
                torch.mm(gathered_grad, weight[k].t(), out=product)
                grad_feats.index_add_(0, transposed.out_idx[k][begin:stop], product)
            if grad_weight is not None:
                gathered_feats = feats_buf[: n * c_in].view(n, c_in)
                torch.index_select(feats, 0, transposed.out_idx[k][begin:stop], out=gathered_feats)
                grad_weight[k].addmm_(gathered_feats.t(), gathered_grad)


def _forward(feats: Tensor, weight: Tensor, kmap: KernelMap) -> Tensor:
    """out = sum_k scatter(out_idx[k], gather(in_idx[k], feats) @ W[k])."""
    out = feats.new_empty(kmap.num_out, weight.shape[2])
    width = max(weight.shape[1], weight.shape[2])
    _run(
        [
            partial(_convolve_rows, out, feats, weight, kmap, span, _scratch(kmap, feats, width, 2))
            for span in _row_ranges(kmap, _workers(feats.device))
        ],
        feats.device,
    )
    return out


def _backward(feats: Tensor, weight: Tensor, grad_out: Tensor, kmap: KernelMap, need_feats: bool, need_weight: bool):
    """dL/dfeats = sum_k scatter(in_idx[k], gather(out_idx[k], g) @ W[k]^T), a forward pass over the
    transposed map; dL/dW[k] = gather(in_idx[k], feats)^T @ gather(out_idx[k], g). Workers split
    the input rows; each adds its rows' weight gradient into its own partial sum."""
    transposed = kmap.transposed
    spans = _row_ranges(transposed, _workers(feats.device))
    width = max(weight.shape[1], weight.shape[2])
    grad_feats = feats.new_empty(kmap.num_in, weight.shape[1]) if need_feats else None
    partial_grads = [torch.zeros_like(weight) if need_weight else None for _ in spans]
    _run(
        [
            partial(
                _backward_rows, grad_feats, part, feats, weight, grad_out, transposed, span,
                _scratch(transposed, feats, width, 3),
            )
            for span, part in zip(spans, partial_grads)
        ],
        feats.device,
    )
    grad_weight = partial_grads[0]
    if need_weight:
        for part in partial_grads[1:]:
            grad_weight += part
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
