"""The training loop, top to bottom: batches -> loss -> step -> log -> validate -> checkpoint.

It is generic over the model and the data: a model is called as `model(batch.input,
batch.dataset)` and returns per-voxel logits over that dataset's classes; a batch is any object
with `input`, `target` (per input row), `inverse` (input row -> voxel) and `dataset`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from pptkit.data.classes import IGNORE_INDEX
from pptkit.engine.checkpoint import save_checkpoint
from pptkit.engine.distributed import DistInfo, all_reduce_sum
from pptkit.engine.run_dir import RunDir
from pptkit.progress import console, fancy, make_progress


@dataclass
class LoopConfig:
    epochs: int
    clip_grad: float
    amp: bool
    log_every: int
    eval_every: int


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint so a resumed run continues exactly."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps taken
    best: float = float("-inf")  # best validation score so far
    history: list[dict[str, Any]] = field(default_factory=list)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel, or the model itself."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches_for_epoch: Callable[[int], Iterable[Any]],
    steps_per_epoch: int,
    dataset_names: list[str],
    validate: Callable[[], dict[str, float]] | None,
    run: RunDir,
    cfg: LoopConfig,
    state: TrainState,
    device: torch.device,
    dist: DistInfo,
    checkpoint_extra: dict[str, Any],
) -> TrainState:
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    last_line = 0.0  # when a plain progress line was last printed (no live bar off a terminal)
    with make_progress() as progress:
        task = progress.add_task("train", total=cfg.epochs * steps_per_epoch,
                                 completed=state.epoch * steps_per_epoch, status="")
        for epoch in range(state.epoch, cfg.epochs):
            model.train()
            seen = {name: 0 for name in dataset_names}
            loss_sum, loss_count, voxels, started = 0.0, 0, 0, time.perf_counter()
            for batch in batches_for_epoch(epoch):
                # Forward: per-voxel logits over this batch's dataset classes, scored per input row.
                with torch.autocast(device.type, enabled=use_amp):
                    logits = model(batch.input, batch.dataset)
                row_logits = logits.float()[batch.inverse]
                if (batch.target != IGNORE_INDEX).any():
                    loss = F.cross_entropy(row_logits, batch.target, ignore_index=IGNORE_INDEX)
                else:  # nothing labelled in this crop: keep every rank's graph alive, learn nothing
                    loss = row_logits.sum() * 0.0

                # Backward and step (gradients are averaged across ranks by DDP).
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.clip_grad > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                state.step += 1

                # Book-keeping and logging.
                loss_sum += loss.item()
                loss_count += 1
                voxels += batch.input.feats.shape[0]
                seen[dataset_names[batch.dataset]] += 1
                lr = optimizer.param_groups[0]["lr"]
                rate = voxels / max(time.perf_counter() - started, 1e-9)
                status = (f"epoch {epoch + 1}/{cfg.epochs} step {state.step} loss {loss.item():.3f} "
                          f"lr {lr:.2e} {rate / 1000:.1f}k vox/s "
                          + " ".join(f"{k}:{v}" for k, v in seen.items()))
                progress.update(task, advance=1, status=status)
                if not fancy() and dist.is_main and time.monotonic() - last_line > 10:
                    console.print(status, highlight=False)
                    last_line = time.monotonic()
                if state.step % cfg.log_every == 0:
                    run.log({"step": state.step, "epoch": epoch + 1, "split": "train",
                             "loss": loss.item(), "lr": lr, "dataset": dataset_names[batch.dataset],
                             "voxels_per_s": rate})

            # End of epoch: summary, validation, checkpoints.
            state.epoch = epoch + 1
            mean_loss = all_reduce_sum(torch.tensor([loss_sum, loss_count], dtype=torch.float64))
            epoch_record: dict[str, Any] = {
                "step": state.step, "epoch": state.epoch, "split": "train_epoch",
                "loss": float(mean_loss[0] / max(mean_loss[1], 1)), "world_size": dist.world_size,
                **{f"batches_{k}": v for k, v in seen.items()},
            }
            run.log(epoch_record)
            improved = False
            if validate is not None and (state.epoch % cfg.eval_every == 0 or state.epoch == cfg.epochs):
                scores = validate()
                run.log({"step": state.step, "epoch": state.epoch, "split": "val", **scores})
                if scores["miou"] > state.best:
                    state.best, improved = scores["miou"], True
                if dist.is_main:
                    console.print(f"epoch {state.epoch}: val mIoU {scores['miou']:.4f} "
                                  + " ".join(f"{k}={v:.3f}" for k, v in scores.items() if k != "miou"))
            state.history.append(epoch_record)
            if dist.is_main:
                ckpt = _checkpoint(model, optimizer, scheduler, scaler, state, checkpoint_extra)
                save_checkpoint(run.last, ckpt)
                if improved or validate is None:
                    save_checkpoint(run.best, ckpt)
    return state


def _checkpoint(model, optimizer, scheduler, scaler, state: TrainState, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "best": state.best,
        "history": state.history,
        "torch_rng": torch.get_rng_state(),
        **extra,
    }


def restore(checkpoint: dict[str, Any], model, optimizer, scheduler) -> TrainState:
    """Load a `last.pt` into freshly built objects and return the state to continue from."""
    unwrap(model).load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["torch_rng"])
    return TrainState(epoch=checkpoint["epoch"], step=checkpoint["step"], best=checkpoint["best"],
                      history=list(checkpoint["history"]))
