"""Learning-rate schedules shared by the stages that train scene models with SGD."""

from __future__ import annotations

from typing import Literal

import torch


def lr_schedule(optimizer: torch.optim.Optimizer, kind: Literal["onecycle", "cosine", "constant"],
                total_steps: int, pct_start: float = 0.05, div_factor: float = 10.0,
                final_div_factor: float = 10000.0) -> torch.optim.lr_scheduler.LRScheduler:
    """One-cycle (cosine annealing, each group peaking at its own lr), cosine, or constant.

    OneCycleLR needs at least one step in each phase: very short runs get a longer warm-up.
    """
    if kind == "onecycle":
        steps = max(total_steps, 3)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=steps,
            pct_start=min(max(pct_start, 1.5 / steps), 0.5), anneal_strategy="cos",
            div_factor=div_factor, final_div_factor=final_div_factor)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
