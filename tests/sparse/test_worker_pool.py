"""The torch backend's CPU worker pool: caller's autograd modes, fork safety, thread counts,
failures and the calling thread's share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from pptkit.sparse import Conv3d, ConvTranspose3d, SubMConv3d, torch_backend
from tests.sparse.test_ops import random_tensor


def small_net() -> torch.nn.Sequential:
    """Every kind of convolution: submanifold, strided, transposed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torch.nn.Sequential(SubMConv3d(3, 4), Conv3d(4, 4), SubMConv3d(4, 4), ConvTranspose3d(4, 2))


def scene():
    """Enough voxels that every worker count below gets its own row range."""
    return random_tensor(n_per_sample=(70, 60), extent=7, channels=3)


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad])
def test_workers_run_in_the_callers_mode(monkeypatch, workers, mode):
    """Pool threads write into the caller's inference tensors, and every worker count gives the
    1-worker result bit for bit."""
    x, net = scene(), small_net()
    monkeypatch.setattr(torch_backend, "_CPU_WORKERS", 1)
    with mode():
        expected = net(x).feats
    kmap = x.context.kernel_map((1, 3, "subm"), lambda: pytest.fail("map should be cached"))
    assert len(torch_backend._row_ranges(kmap, workers)) == workers
    monkeypatch.setattr(torch_backend, "_CPU_WORKERS", workers)
    with mode():
        got = net(x).feats
    assert got.is_inference() == (mode is torch.inference_mode)
    assert torch.equal(got, expected)


FORKED_CHILD_SCRIPT = """
import multiprocessing, sys, time, torch
from pptkit.sparse import SubMConv3d, sparse_collate, torch_backend

torch.set_num_threads(1)
torch_backend.set_cpu_workers(2)
gen = torch.Generator().manual_seed(0)
grid = torch.unique(torch.randint(0, 20, (3000, 3), generator=gen), dim=0)
x, _ = sparse_collate([grid], [torch.randn(len(grid), 3, generator=gen)])
conv = SubMConv3d(3, 4)
with torch.no_grad():
    for _ in range(3):  # the parent's pool, with all its threads started as after any training step
        expected = conv(x).feats


def child():
    with torch.no_grad():
        sys.exit(0 if torch.equal(conv(x).feats, expected) else 3)


time.sleep(0.5)  # the pool's threads go idle, as they are when a DataLoader forks its workers
process = multiprocessing.get_context("fork").Process(target=child)
process.start()
process.join(20)
if process.is_alive():
    process.kill()
    sys.exit("the forked child hung in its convolution")
sys.exit(process.exitcode)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="fork is DataLoader's default start method only on Linux")
def test_forked_child_runs_parallel_convolutions():
    """A DataLoader worker forked after the parent's pool started must not wait on its threads."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FORKED_CHILD_SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the parent of the forked child hung")
    assert proc.returncode == 0, output


def _thread_count_in_new_thread() -> int:
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def test_convolutions_leave_the_thread_count_alone(monkeypatch):
    """torch.set_num_threads is process-wide: pool threads set theirs once, when they start, and
    the user's count (also the one threads started later get) stays as it was."""
    torch.set_num_threads(2)  # the conftest fixture restores its count after the test
    monkeypatch.setattr(torch_backend, "_POOL", None)  # this test starts its own pool
    monkeypatch.setattr(torch_backend, "_CPU_WORKERS", 2)
    x, net = scene(), small_net()

    def forward_backward():
        feats = x.feats.clone().requires_grad_()
        net(x.replace(feats)).feats.square().sum().backward()

    forward_backward()  # starts the pool and builds the kernel maps
    assert torch.get_num_threads() == 2 and _thread_count_in_new_thread() == 2
    assert torch_backend._pool(2).submit(torch.get_num_threads).result() == 1
    calls = []
    set_num_threads = torch.set_num_threads

    def recording(threads: int) -> None:
        calls.append((threading.current_thread().name, threads))
        set_num_threads(threads)

    monkeypatch.setattr(torch, "set_num_threads", recording)
    forward_backward()
    assert calls == []
    assert torch.get_num_threads() == 2 and _thread_count_in_new_thread() == 2


@pytest.mark.parametrize("failing", [0, 1])
def test_a_failing_worker_waits_for_its_siblings(monkeypatch, failing):
    """When one share raises, the error reaches the caller only after every other share is done
    (none may still write into the output)."""
    x, conv = scene(), SubMConv3d(3, 4)
    with torch.no_grad():
        expected = conv(x).feats
    kmap = x.context.kernel_map((1, 3, "subm"), lambda: pytest.fail("map should be cached"))
    spans = torch_backend._row_ranges(kmap, 3)
    assert len(spans) == 3
    finished = []
    convolve_rows = torch_backend._convolve_rows

    def convolve_or_fail(out, feats, weight, kmap, span, scratch):
        if span == spans[failing]:
            raise RuntimeError("injected failure")
        time.sleep(0.1 * (1 + spans.index(span)))  # later shares finish later
        convolve_rows(out, feats, weight, kmap, span, scratch)
        finished.append(span)

    monkeypatch.setattr(torch_backend, "_convolve_rows", convolve_or_fail)
    monkeypatch.setattr(torch_backend, "_CPU_WORKERS", 3)
    with pytest.raises(RuntimeError, match="injected failure"), torch.no_grad():
        conv(x)
    assert sorted(finished) == [span for i, span in enumerate(spans) if i != failing]
    monkeypatch.setattr(torch_backend, "_convolve_rows", convolve_rows)
    with torch.no_grad():
        assert torch.equal(conv(x).feats, expected)  # the pool still works


@pytest.mark.parametrize("caller_threads, pool_threads", [(1, 2), (2, 3)])
def test_the_calling_thread_takes_a_share(monkeypatch, caller_threads, pool_threads):
    """3 workers = the calling thread + 2 pool threads, when the caller runs torch single-threaded
    like the pool threads; a caller with more intra-op threads leaves all 3 shares to the pool."""
    torch.set_num_threads(caller_threads)  # the conftest fixture restores its count after the test
    monkeypatch.setattr(torch_backend, "_POOL", None)
    monkeypatch.setattr(torch_backend, "_CPU_WORKERS", 3)
    x, net = scene(), small_net()
    threads = {"forward": set(), "backward": set()}
    for name, key in [("_convolve_rows", "forward"), ("_backward_rows", "backward")]:
        def recording(*args, run=getattr(torch_backend, name), key=key):
            threads[key].add(threading.current_thread())
            run(*args)

        monkeypatch.setattr(torch_backend, name, recording)
    feats = x.feats.clone().requires_grad_()
    net(x.replace(feats)).feats.square().sum().backward()
    assert torch_backend._POOL._max_workers == pool_threads
    caller = threading.current_thread()
    for key, ran in threads.items():
        assert (caller in ran) == (caller_threads == 1), key
        assert all(t.name.startswith("pptkit-sparse") for t in ran - {caller}), key
