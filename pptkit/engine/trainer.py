"""The training loop, top to bottom: batches -> loss -> step -> log -> validate -> checkpoint.

One loop serves every stage. A stage supplies its model, optimiser and schedule, a function
that yields each epoch's batches, a loss function `loss_fn(model, batch, step) -> StepResult`,
and optionally a validation function returning scores (one of which, `LoopConfig.monitor`,
picks `best.pt`). Everything else — mixed precision, gradient clipping, progress, metrics.jsonl,
checkpoints and exact resume — is here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from pptkit.engine.checkpoint import save_checkpoint
from pptkit.engine.distributed import DistInfo, all_reduce_sum, check_in_sync
from pptkit.engine.run_dir import RunDir
from pptkit.progress import console, fancy, make_progress


@dataclass
class StepResult:
    """What a stage's loss function returns for one batch."""

    loss: torch.Tensor  # the scalar to minimise
    size: int  # items the step processed (voxels, points, objects): the throughput's numerator
    metrics: dict[str, float] = field(default_factory=dict)  # extra scalars logged with the step
    counts: dict[str, int] = field(default_factory=dict)  # summed over the epoch (e.g. batches per dataset)
    tag: dict[str, Any] = field(default_factory=dict)  # non-numeric step facts for the log (e.g. dataset)


LossFn = Callable[[torch.nn.Module, Any, int], StepResult]


@dataclass
class LoopConfig:
    epochs: int
    clip_grad: float  # max gradient norm; 0 turns clipping off
    amp: bool  # mixed precision (CUDA only)
    log_every: int  # steps between metrics.jsonl lines
    eval_every: int = 1  # epochs between validations
    monitor: str = "miou"  # validation score that picks best.pt
    monitor_mode: Literal["max", "min"] = "max"
    unit: str = "vox"  # what StepResult.size counts, for the progress line


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint so a resumed run continues exactly."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    best: float | None = None  # best monitored validation score so far
    history: list[dict[str, Any]] = field(default_factory=list)
    scaler: dict[str, Any] = field(default_factory=dict)  # GradScaler state (AMP)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel, or the model itself."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def grad_scaler(device: torch.device, enabled: bool, state: dict[str, Any]) -> torch.amp.GradScaler:
    """A GradScaler for `device`, continuing from a checkpoint's scaler state when there is one."""
    scaler = torch.amp.GradScaler(device.type, enabled=enabled)
    if enabled and state:
        scaler.load_state_dict(state)
    return scaler


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: LossFn,
    batches_for_epoch: Callable[[int], Iterable[Any]],
    steps_per_epoch: int,
    validate: Callable[[], dict[str, float]] | None,
    run: RunDir,
    cfg: LoopConfig,
    state: TrainState,
    device: torch.device,
    dist: DistInfo,
    checkpoint_extra: dict[str, Any] | Callable[[], dict[str, Any]],
) -> TrainState:
    """Train to `cfg.epochs`; `checkpoint_extra` (a dict, or a function called at every save for
    values that change, such as a sub-module's current state dict) is merged into each checkpoint."""
    use_amp = cfg.amp and device.type == "cuda"
    scaler = grad_scaler(device, use_amp, state.scaler)
    trainable = [p for p in model.parameters() if p.requires_grad]
    last_line = 0.0  # when a plain progress line was last printed (no live bar off a terminal)
    with make_progress() as progress:
        task = progress.add_task("train", total=cfg.epochs * steps_per_epoch,
                                 completed=state.epoch * steps_per_epoch, status="")
        for epoch in range(state.epoch, cfg.epochs):
            model.train()
            counts: dict[str, int] = {}
            loss_sum, loss_count, items, started = 0.0, 0, 0, time.perf_counter()
            for batch in batches_for_epoch(epoch):
                # Forward: the stage's loss on this batch (under autocast on CUDA with AMP).
                with torch.autocast(device.type, enabled=use_amp):
                    result = loss_fn(model, batch, state.step)

                # Backward and step (gradients are averaged across ranks by DDP).
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(result.loss).backward()
                if cfg.clip_grad > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                state.step += 1

                # Book-keeping and logging.
                loss = result.loss.item()
                loss_sum += loss
                loss_count += 1
                items += result.size
                for key, n in result.counts.items():
                    counts[key] = counts.get(key, 0) + n
                lr = optimizer.param_groups[0]["lr"]
                rate = items / max(time.perf_counter() - started, 1e-9)
                status = (f"epoch {epoch + 1}/{cfg.epochs} step {state.step} loss {loss:.3f} "
                          f"lr {lr:.2e} {rate / 1000:.1f}k {cfg.unit}/s "
                          + " ".join(f"{k}:{v}" for k, v in counts.items()))
                progress.update(task, advance=1, status=status)
                if not fancy() and dist.is_main and time.monotonic() - last_line > 10:
                    console.print(status)
                    last_line = time.monotonic()
                if state.step % cfg.log_every == 0:
                    run.log({"step": state.step, "epoch": epoch + 1, "split": "train", "loss": loss,
                             "lr": lr, **result.tag, **result.metrics, f"{cfg.unit}_per_s": rate})

            # End of epoch: summary, validation, checkpoints.
            state.epoch = epoch + 1
            totals = all_reduce_sum(torch.tensor([loss_sum, loss_count], dtype=torch.float64))
            epoch_record: dict[str, Any] = {
                "step": state.step, "epoch": state.epoch, "split": "train_epoch",
                "loss": float(totals[0] / max(totals[1], 1)), "world_size": dist.world_size, **counts,
            }
            run.log(epoch_record)
            improved = False
            if validate is not None and (state.epoch % cfg.eval_every == 0 or state.epoch == cfg.epochs):
                scores = validate()
                run.log({"step": state.step, "epoch": state.epoch, "split": "val", **scores})
                score = scores[cfg.monitor]
                if state.best is None or (score > state.best if cfg.monitor_mode == "max" else score < state.best):
                    state.best, improved = score, True
                if dist.is_main:
                    console.print(f"epoch {state.epoch}: val {cfg.monitor} {score:.4f} "
                                  + " ".join(f"{k}={v:.3f}" for k, v in scores.items() if k != cfg.monitor))
            state.history.append(epoch_record)
            state.scaler = scaler.state_dict() if use_amp else {}
            if dist.is_main:
                ckpt = _checkpoint(model, optimizer, scheduler, state, device, checkpoint_extra)
                save_checkpoint(run.last, ckpt)
                if improved or validate is None:
                    save_checkpoint(run.best, ckpt)
    return state


def check_ranks_agree(model: torch.nn.Module, state: TrainState, run: RunDir, dist: DistInfo) -> None:
    """After a torchrun run: log whether every rank ended with the same weights; raise if not."""
    if not dist.enabled:
        return
    in_sync = check_in_sync(model)
    run.log({"step": state.step, "epoch": state.epoch, "split": "ddp_check",
             "world_size": dist.world_size, "ranks_in_sync": in_sync})
    if not in_sync:
        raise RuntimeError("ranks ended with different weights")


def _checkpoint(model, optimizer, scheduler, state: TrainState, device: torch.device,
                extra: dict[str, Any] | Callable[[], dict[str, Any]]) -> dict[str, Any]:
    rng = {"torch_rng": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda_rng"] = torch.cuda.get_rng_state(device)
    return {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": state.scaler,
        "epoch": state.epoch,
        "step": state.step,
        "best": state.best,
        "history": state.history,
        **rng,
        **(extra() if callable(extra) else extra),
    }


def restore(checkpoint: dict[str, Any], model, optimizer, scheduler, device: torch.device) -> TrainState:
    """Load a `last.pt` (read on the CPU) into freshly built objects; return the state to continue from."""
    unwrap(model).load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])  # moves its tensors to the parameters' device
    scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["torch_rng"].cpu())
    if device.type == "cuda" and "cuda_rng" in checkpoint:
        torch.cuda.set_rng_state(checkpoint["cuda_rng"].cpu(), device)
    return TrainState(epoch=checkpoint["epoch"], step=checkpoint["step"], best=checkpoint["best"],
                      history=list(checkpoint["history"]), scaler=dict(checkpoint.get("scaler") or {}))
