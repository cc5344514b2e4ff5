"""Every sparse op, and a small SparseUNet, gives the same outputs and gradients on CUDA as on CPU.

`device_results` runs one case on one device and `assert_results_close` compares two runs; the
CUDA tests (marker `cuda`, `make test-cuda`) compare CUDA with CPU, and the tests without the
marker run the same code CPU against CPU (1 worker against 2) and check that the tolerance
catches a real difference while leaving room for float32 rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor

from pptkit.models.sparse_unet import SparseUNet, UNetOutput
from pptkit.sparse import (
    BatchNorm,
    Conv3d,
    ConvTranspose3d,
    GlobalPool,
    ReLU,
    SparseTensor,
    SubMConv3d,
    sparse_collate,
    torch_backend,
)
from tests.sparse.rooms import synthetic_room

RTOL = 1e-4
ATOL = 1e-5  # times the largest magnitude of the compared tensor (float32 sums of many products)
NETWORK_ATOL = 1e-4  # the same for a whole network, whose rounding errors add up over 20+ layers

CASES = {
    "subm1": lambda: SubMConv3d(4, 6, kernel_size=1),
    "subm3_bias": lambda: SubMConv3d(4, 6, kernel_size=3, bias=True),
    "subm5": lambda: SubMConv3d(4, 6, kernel_size=5),
    "conv_stride1": lambda: Conv3d(4, 6, kernel_size=3, stride=1),
    "down2": lambda: Conv3d(4, 6, kernel_size=2, stride=2),
    "down3_bias": lambda: Conv3d(4, 6, kernel_size=3, stride=2, bias=True),
    "down_up": lambda: torch.nn.Sequential(
        Conv3d(4, 6, kernel_size=2, stride=2), ConvTranspose3d(6, 5, kernel_size=2, stride=2, bias=True)
    ),
    "down_down_up_up": lambda: torch.nn.Sequential(
        Conv3d(4, 6, kernel_size=2, stride=2), Conv3d(6, 6, kernel_size=3, stride=2),
        ConvTranspose3d(6, 6, kernel_size=3, stride=2), ConvTranspose3d(6, 5, kernel_size=2, stride=2),
    ),
    "batchnorm_relu": lambda: torch.nn.Sequential(SubMConv3d(4, 6), BatchNorm(6), ReLU()),
    "avg_pool": lambda: torch.nn.Sequential(SubMConv3d(4, 6), GlobalPool("avg")),
    "max_pool": lambda: torch.nn.Sequential(SubMConv3d(4, 6), GlobalPool("max")),
    "sparse_unet": lambda: SparseUNet(
        4, 5, base_channels=8, channels=(8, 16, 16, 16, 16, 16, 8, 8), layers=(1, 1, 1, 1, 1, 1, 1, 1)
    ),
}


def _scene() -> tuple[list[np.ndarray], list[Tensor]]:
    """Two room-like samples (coordinates and 4 feature channels), the same for every device."""
    grids = [synthetic_room(1500, np.random.default_rng(3)), synthetic_room(900, np.random.default_rng(4))]
    gen = torch.Generator().manual_seed(0)
    return grids, [torch.randn(len(g), 4, generator=gen) for g in grids]


def _build(case: str) -> torch.nn.Module:
    """The module of `case`, its weights drawn on the CPU under a fixed seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return CASES[case]()


def _output(out) -> tuple[Tensor, Tensor | None]:
    """(features, coordinates) of an output: SparseTensor, UNetOutput (its logits) or pooled Tensor."""
    if isinstance(out, UNetOutput):
        return out.logits, out.feats.coords
    if isinstance(out, SparseTensor):
        return out.feats, out.coords
    return out, None


def device_results(case: str, device: str, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Run `case` in training mode on `device`: forward, then backward of a fixed random projection.

    Weights (built under a fixed seed), inputs and projection are made on the CPU and moved, so
    every device gets the same numbers. Returns, on the CPU: output coordinates (if any), output,
    input gradient, every parameter's gradient and every buffer (BatchNorm running statistics).
    """
    module = _build(case).to(device=device, dtype=dtype).train()
    grids, feats = _scene()
    x, _ = sparse_collate(grids, [f.to(dtype) for f in feats], device=device)
    x = x.replace(x.feats.clone().requires_grad_())
    y, coords = _output(module(x))
    target = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    (y * target).sum().backward()
    results = {"output": y, "input_grad": x.feats.grad}
    if coords is not None:
        results["coords"] = coords
    results.update({f"grad:{name}": p.grad for name, p in module.named_parameters()})
    results.update({f"buffer:{name}": b for name, b in module.named_buffers()})
    return {name: t.detach().cpu() for name, t in results.items()}


def assert_results_close(
    actual: dict[str, Tensor], expected: dict[str, Tensor], rtol: float = RTOL, atol: float = ATOL
) -> None:
    """Coordinates and integer buffers equal; floats within rtol, with an absolute floor of `atol`
    times the largest magnitude of the expected tensor."""
    assert actual.keys() == expected.keys()
    for name, want in expected.items():
        got = actual[name]
        if not want.is_floating_point():
            assert torch.equal(got, want), name
            continue
        scale = want.abs().max().item() if want.numel() else 0.0
        torch.testing.assert_close(
            got.to(want.dtype), want, rtol=rtol, atol=atol * max(scale, 1e-6), msg=lambda m: f"{name}: {m}"
        )


def device_inference(case: str, device: str) -> dict[str, Tensor]:
    """The output of `case` in eval mode under torch.inference_mode on `device`, on the CPU."""
    module = _build(case).to(device).eval()
    grids, feats = _scene()
    with torch.inference_mode():
        x, _ = sparse_collate(grids, feats, device=device)
        return {"output": _output(module(x))[0].cpu()}


def case_atol(case: str) -> float:
    return NETWORK_ATOL if case == "sparse_unet" else ATOL


def compare_devices(case: str, device_a: str, device_b: str) -> None:
    """`case` on device_a matches `case` on device_b, in training (forward and backward) and in inference."""
    atol = case_atol(case)
    assert_results_close(device_results(case, device_a), device_results(case, device_b), atol=atol)
    assert_results_close(device_inference(case, device_a), device_inference(case, device_b), atol=atol)


@pytest.mark.parametrize("case", CASES)
def test_comparison_runs_on_cpu_against_cpu(monkeypatch, case):
    """The comparison itself, CPU with 2 workers against CPU with 1: where there is no GPU this
    runs the code the CUDA tests use."""
    def run(workers: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        monkeypatch.setattr(torch_backend, "_CPU_WORKERS", workers)
        return device_results(case, "cpu"), device_inference(case, "cpu")

    (training, inference), (one_worker_training, one_worker_inference) = run(2), run(1)
    assert_results_close(training, one_worker_training, atol=case_atol(case))
    assert_results_close(inference, one_worker_inference, atol=case_atol(case))
    assert len(training) >= 3 and all(t.numel() for t in training.values())


@pytest.mark.parametrize("case", ["subm3_bias", "sparse_unet"])
def test_float32_rounding_fits_well_within_the_tolerance(case):
    """float32 against float64 passes at a quarter of the tolerance: a CUDA run differs from a CPU
    run by about twice the rounding error of either, so CUDA against CPU has room to spare."""
    float32, float64 = device_results(case, "cpu"), device_results(case, "cpu", torch.float64)
    assert_results_close(float32, float64, RTOL / 4, case_atol(case) / 4)


def test_comparison_catches_a_real_difference(monkeypatch):
    """Weights 0.1% off are caught: the tolerance is not so loose that it passes anything."""
    expected = device_results("subm3_bias", "cpu")
    make = CASES["subm3_bias"]

    def nudged():
        conv = make()
        with torch.no_grad():
            conv.weight *= 1.001
        return conv

    monkeypatch.setitem(CASES, "subm3_bias", nudged)
    with pytest.raises(AssertionError, match="output"):
        assert_results_close(device_results("subm3_bias", "cpu"), expected)


@pytest.fixture
def full_float32_matmul(monkeypatch):
    """No TF32 in CUDA GEMMs (off by default; a user's setting must not loosen these tests)."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("case", CASES)
def test_cuda_matches_cpu(full_float32_matmul, case):
    compare_devices(case, "cuda", "cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("case", ["subm3_bias", "down_up"])
def test_cuda_small_chunks_match_cpu(full_float32_matmul, monkeypatch, case):
    """The chunk loop on the GPU: a few pairs per chunk instead of every offset in one."""
    monkeypatch.setattr(torch_backend, "GPU_CHUNK_ELEMENTS", 60)
    compare_devices(case, "cuda", "cpu")
