"""What every training stage does before its first step: device, process group, run folder,
checkpoint to resume from, and the recipe (which must equal the checkpoint's when resuming)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from pptkit.config import from_dict, load_recipe
from pptkit.engine.checkpoint import load_checkpoint
from pptkit.engine.distributed import DistInfo, init_distributed, resolve_device
from pptkit.engine.run_dir import RunDir
from pptkit.errors import InputError

R = TypeVar("R")


@dataclass(kw_only=True)
class RunOptions:
    """What every training command takes besides its own inputs; each stage's options extend it."""

    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    resume: bool = False  # continue from RUN_DIR/last.pt
    overrides: list[str] = field(default_factory=list)  # --set key.path=value
    verbose: bool = False


@dataclass
class RunSetup(Generic[R]):
    device: torch.device
    dist: DistInfo
    run: RunDir
    recipe: R
    checkpoint: dict[str, Any] | None  # last.pt when resuming, read on the CPU


def open_run(out: Path, resume: bool, recipe_path: Path | None, recipe_cls: type[R],
             overrides: list[str], device: str) -> RunSetup[R]:
    """Check the run folder, read the checkpoint to resume from and resolve the recipe.

    Nothing is written: the stage checks its own inputs next, then calls `run.start(...)`.
    """
    torch_device = resolve_device(device)
    dist = init_distributed(torch_device)
    run = RunDir(out, writer=dist.is_main)
    run.check(resume)
    # Always read on the CPU: RNG states must be CPU tensors; weights move with load_state_dict.
    checkpoint = load_checkpoint(run.last) if resume else None
    recipe = resolve_recipe(recipe_cls, recipe_path, overrides, checkpoint, run.path / "config.toml")
    return RunSetup(torch_device, dist, run, recipe, checkpoint)


def resolve_recipe(recipe_cls: type[R], recipe_path: Path | None, overrides: list[str],
                   checkpoint: dict[str, Any] | None, saved_config: Path) -> R:
    """The recipe plus overrides; when resuming it must equal the checkpoint's own config."""
    recipe = load_recipe(recipe_path, recipe_cls, overrides)
    if checkpoint is None:
        return recipe
    saved = from_dict(recipe_cls, checkpoint["config"], str(saved_config))
    if recipe_path is not None or overrides:
        if saved != recipe:
            raise InputError("recipe differs from the run's config.toml; resume with the same "
                             "recipe and --set values (or none)", saved_config)
    return saved
