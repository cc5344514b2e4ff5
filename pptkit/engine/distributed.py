"""Distributed set-up from torchrun's environment.

On CUDA the process group serves both devices (`cpu:gloo,cuda:nccl`): gradients go through
NCCL, while small CPU tensors (loss sums, confusion matrices, checksums) can still be reduced.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo(0, 1, 0)
    if not dist.is_initialized():
        dist.init_process_group(backend=process_group_backend(device))
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def process_group_backend(device: torch.device) -> str:
    """gloo for CPU tensors everywhere, plus NCCL for CUDA tensors when training on GPUs."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def resolve_device(spec: str) -> torch.device:
    """`auto` picks CUDA when available (the local rank's GPU under torchrun), else CPU."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            from pptkit.errors import InputError
            raise InputError("CUDA was requested but is not available", "--device")
        torch.cuda.set_device(device)
    return device


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (identity when not distributed)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def check_in_sync(model: torch.nn.Module) -> bool:
    """True when every rank holds the same parameters (compares a checksum across ranks)."""
    if not dist.is_initialized():
        return True
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    low, high = checksum.clone(), checksum.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool((high - low).abs().item() <= 1e-9 * max(1.0, checksum.abs().item()))


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
