"""The torch backend's CPU worker pool: caller's autograd modes, fork safety, thread counts,
failures and the calling thread's share."""

from __future__ import annotations

import pytest
import torch

from pptkit.sparse import Conv3d, ConvTranspose3d, SubMConv3d, torch_backend
from tests.sparse.test_ops import random_tensor


def small_net() -> torch.nn.Sequential:
    """Every kind of convolution: submanifold, strided, transposed."""
    torch.manual_seed(0)
    return torch.nn.Sequential(SubMConv3d(3, 4), Conv3d(4, 4), SubMConv3d(4, 4), ConvTranspose3d(4, 2))


def scene():
    """Enough voxels that every worker count below gets its own row range."""
    return random_tensor(n_per_sample=(70, 60), extent=7, channels=3)


@pytest.mark.parametrize("workers", [2, 3])
@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad])
def test_workers_run_in_the_callers_mode(monkeypatch, workers, mode):
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
