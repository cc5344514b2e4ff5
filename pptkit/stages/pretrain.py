"""`pptkit pretrain`: self-supervised pretraining of the point-patch Transformer.

Three stages share one recipe (`pptkit.stages.act_recipe.ACTRecipe`) and the training engine:

- `autoencoder` — ACT stage I: a dVAE-style autoencoder around a frozen, prompt-tuned image
  Transformer (`pptkit.models.act.ACTAutoencoder`);
- `distill` — ACT stage II: a student encoder predicts a finished stage-I run's latent
  features at masked patches (`ACTDistillation`; needs `--autoencoder RUN_DIR`);
- `mae` — the Point-MAE baseline: masked patch reconstruction (`PointMAE`).

Checkpoints hold only trained weights (the frozen teacher blocks and the frozen stage-I model
are rebuilt from their own files; digests recorded in the checkpoint guard against a different
file). Besides the engine's keys every checkpoint records "stage", and the distill and mae
checkpoints hold the student encoder's state dict under "encoder" (the key layout of
`pptkit.models.point_transformer`) with its constructor arguments under "encoder_config", so
`pptkit finetune` loads any of them without knowing which stage made it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pptkit.config import from_dict, to_dict, to_toml
from pptkit.data.transforms import Compose, RandomRotate, RandomScale, RandomShift
from pptkit.engine.checkpoint import load_checkpoint, state_digest
from pptkit.engine.distributed import all_reduce_sum, cleanup
from pptkit.engine.object_batches import (
    PointBatch,
    PointBatches,
    PointSource,
    epoch_batches,
    ordered_batches,
    point_loader,
)
from pptkit.engine.setup import RunOptions, RunSetup, open_run
from pptkit.engine.trainer import LoopConfig, StepResult, TrainState, check_ranks_agree, restore, train
from pptkit.errors import InputError
from pptkit.models.act import (
    ACTAutoencoder,
    ACTDistillation,
    PointMAE,
    autoencoder_losses,
    cosine_loss,
    cosine_schedule,
    num_masked,
    patch_chamfer,
)
from pptkit.models.point_transformer import PointTransformerEncoder
from pptkit.models.teacher_weights import load_teacher_weights
from pptkit.models.vit_teacher import VisionTransformer
from pptkit.progress import console
from pptkit.stages.act_recipe import ACTRecipe

STAGES = ("autoencoder", "distill", "mae")


@dataclass
class PretrainOptions(RunOptions):
    recipe: Path | None
    data: list[Path]  # training stores (objects, or scenes with `crop`)
    out: Path
    stage: str  # autoencoder | distill | mae
    val: list[Path] = field(default_factory=list)  # held-out stores: report their loss
    autoencoder: Path | None = None  # distill: the finished stage-I run
    teacher: str | None = None  # stage I: the teacher spec; distill: where the stage-I teacher is now
    crop: int | None = None  # points per random crop of scene stores


@dataclass
class PreparedTeacher:
    """An image teacher ready for stage I: its spec, the digest of the weights it uses, the model."""

    spec: str
    digest: str
    model: VisionTransformer


@dataclass
class _Inputs:
    """Everything checked before the run folder is touched."""

    train: PointSource
    val: PointSource | None
    teacher: PreparedTeacher | None = None  # autoencoder and distill
    autoencoder_run: Path | None = None  # distill
    autoencoder_state: dict[str, torch.Tensor] | None = None  # distill: the trained stage-I weights
    autoencoder_digest: str = ""
    autoencoder_recipe: ACTRecipe | None = None


def run_pretrain(opts: PretrainOptions) -> ACTRecipe:
    _check_options(opts)
    overrides = list(opts.overrides)
    if opts.teacher is not None and opts.stage == "autoencoder":
        overrides.append(f"autoencoder.teacher={json.dumps(opts.teacher)}")
    setup = open_run(opts.out, opts.resume, opts.recipe, ACTRecipe, overrides, opts.device)
    inputs = _check_inputs(opts, setup)
    torch.manual_seed(opts.seed)
    model = _build_model(opts.stage, setup.recipe, inputs, opts.recipe or "--set")  # checks the settings too
    setup.run.start(to_toml(setup.recipe), resume_step=None if setup.checkpoint is None else setup.checkpoint["step"])
    try:
        return _train(opts, setup, inputs, model)
    finally:
        setup.run.close()
        cleanup()


# --- input checks (nothing is written until they pass) -----------------------------------------


def _check_options(opts: PretrainOptions) -> None:
    if opts.stage not in STAGES:
        raise InputError(f"unknown stage '{opts.stage}' (use {' | '.join(STAGES)})", "--stage")
    if opts.autoencoder is not None and opts.stage != "distill":
        raise InputError("only --stage distill takes --autoencoder", "--autoencoder")
    if opts.stage == "distill" and opts.autoencoder is None and not opts.resume:
        raise InputError("--stage distill needs --autoencoder RUN_DIR (a finished --stage autoencoder run)",
                         "--autoencoder")
    if opts.teacher is not None and opts.stage == "mae":
        raise InputError("--stage mae uses no teacher", "--teacher")
    if opts.crop is not None and opts.crop < 1:
        raise InputError(f"must be at least 1, got {opts.crop}", "--crop")


def _check_inputs(opts: PretrainOptions, setup: RunSetup[ACTRecipe]) -> _Inputs:
    recipe, checkpoint, dist = setup.recipe, setup.checkpoint, setup.dist
    source = opts.recipe or "--set"
    g, k, n = recipe.patches.num_groups, recipe.patches.group_size, recipe.data.num_points
    if g > n or k > n:
        raise InputError(f"{g} patches of {k} points need at least {max(g, k)} points per cloud, "
                         f"data.num_points is {n}", source, where="patches")
    if opts.stage != "autoencoder":
        section = _stage_section(recipe, opts.stage)
        masked = num_masked(g, section.mask_ratio)
        if not 1 <= masked < g:
            raise InputError(f"mask ratio {section.mask_ratio} masks {masked} of {g} patches; at least one "
                             "must be masked and one visible", source, where=f"{opts.stage}.mask_ratio")
    if checkpoint is not None and checkpoint.get("stage") != opts.stage:
        raise InputError(f"is a --stage {checkpoint.get('stage')} run; resume it with that stage", setup.run.last)

    train_source = PointSource(opts.data, n, recipe.data.sampling, opts.crop, "--data")
    val_source = PointSource(opts.val, n, recipe.data.sampling, opts.crop, "--val") if opts.val else None
    global_batch = _stage_section(recipe, opts.stage).batch_size * dist.world_size
    if len(train_source) < global_batch:
        raise InputError(f"{len(train_source)} training clouds are fewer than one global batch ({global_batch} = "
                         f"{opts.stage}.batch_size x {dist.world_size} processes)", "--data")
    if checkpoint is not None and checkpoint.get("crop") != opts.crop:
        started = f"--crop {checkpoint['crop']}" if checkpoint.get("crop") else "no --crop"
        raise InputError(f"the run started with {started}; resume with the same", "--crop")
    if checkpoint is not None and checkpoint.get("num_items") != len(train_source):
        raise InputError(f"--data holds {len(train_source)} clouds, the run trained on {checkpoint.get('num_items')}; "
                         "resume with the same stores", "--data")
    inputs = _Inputs(train_source, val_source)

    if opts.stage == "autoencoder":
        inputs.teacher = prepare_teacher(recipe.autoencoder.teacher, recipe.autoencoder.teacher_depth, source)
        if checkpoint is not None and checkpoint["teacher_digest"] != inputs.teacher.digest:
            raise InputError("the teacher's weights differ from those this run started with", inputs.teacher.spec)
    elif opts.stage == "distill":
        run_dir = opts.autoencoder if opts.autoencoder is not None else Path(checkpoint["autoencoder_run"])
        ae = _autoencoder_checkpoint(run_dir)
        ae_recipe = from_dict(ACTRecipe, ae["config"], str(run_dir / "config.toml"))
        if ae_recipe.patches != recipe.patches:
            raise InputError(f"the autoencoder run cuts {ae_recipe.patches.num_groups} patches of "
                             f"{ae_recipe.patches.group_size} points; this recipe {g} of {k}", "--autoencoder")
        ae_digest = state_digest(ae["model"])
        if checkpoint is not None and checkpoint["autoencoder_digest"] != ae_digest:
            raise InputError("the autoencoder's weights differ from those this run started with", run_dir)
        spec = opts.teacher if opts.teacher is not None else ae["teacher"]
        teacher = prepare_teacher(spec, ae_recipe.autoencoder.teacher_depth, "--teacher")
        if teacher.digest != ae["teacher_digest"]:
            raise InputError("these teacher weights differ from those the autoencoder run was trained with",
                             teacher.spec)
        inputs.teacher, inputs.autoencoder_run = teacher, run_dir.resolve()
        inputs.autoencoder_state, inputs.autoencoder_digest, inputs.autoencoder_recipe = ae["model"], ae_digest, ae_recipe
    return inputs


def prepare_teacher(spec: str, depth: int, where: str | Path = "--teacher") -> PreparedTeacher:
    """The teacher `spec` (cut to its first `depth` blocks when depth > 0) and its digest."""
    state, config = load_teacher_weights(spec)
    if depth > config.depth:
        raise InputError(f"autoencoder.teacher_depth is {depth}, but the teacher has {config.depth} blocks",
                         where, where="autoencoder.teacher_depth")
    model = VisionTransformer(config)
    model.load_state_dict(state)
    if depth:
        model.blocks = model.blocks[:depth]
    used = {**{f"blocks.{k}": v for k, v in model.blocks.state_dict().items()},
            **{f"norm.{k}": v for k, v in model.norm.state_dict().items()}}
    return PreparedTeacher(spec, state_digest(used), model.eval())


def _autoencoder_checkpoint(run_dir: Path) -> dict[str, Any]:
    """last.pt of a finished `--stage autoencoder` run, or an InputError saying what it is."""
    if not (run_dir / "last.pt").is_file():
        raise InputError("has no last.pt; expected the --out folder of a finished --stage autoencoder run", run_dir)
    checkpoint = load_checkpoint(run_dir / "last.pt")
    stage = checkpoint.get("stage")
    if stage != "autoencoder":
        what = f"a --stage {stage} run" if stage in STAGES else "not a pptkit pretrain run"
        raise InputError(f"is {what}, not a --stage autoencoder run", run_dir)
    epochs = checkpoint["config"]["train"]["epochs"]
    if checkpoint["epoch"] != epochs:
        raise InputError(f"the autoencoder run stopped after epoch {checkpoint['epoch']} of {epochs}; "
                         "finish it with --resume first", run_dir)
    return checkpoint


def _stage_section(recipe: ACTRecipe, stage: str):
    return {"autoencoder": recipe.autoencoder, "distill": recipe.distill, "mae": recipe.mae}[stage]


# --- models ----------------------------------------------------------------------------------


def encoder_config(recipe: ACTRecipe) -> dict[str, Any]:
    """The student's `PointTransformerEncoder` constructor arguments, as a plain dict."""
    e, p = recipe.encoder, recipe.patches
    return {"embed_dim": e.embed_dim, "depth": e.depth, "num_heads": e.num_heads, "mlp_ratio": e.mlp_ratio,
            "qkv_bias": e.qkv_bias, "drop_path_rate": e.drop_path_rate, "num_groups": p.num_groups,
            "group_size": p.group_size, "pos_hidden": e.pos_hidden,
            "embed_first_channels": list(e.embed_first_channels), "embed_second_hidden": e.embed_second_hidden}


def build_autoencoder(recipe: ACTRecipe, teacher: VisionTransformer) -> ACTAutoencoder:
    a, p = recipe.autoencoder, recipe.patches
    return ACTAutoencoder(
        teacher, num_groups=p.num_groups, group_size=p.group_size, encoder_dim=a.encoder_dim,
        num_tokens=a.num_tokens, token_dim=a.token_dim, decoder_dim=a.decoder_dim, graph_k=a.graph_k,
        graph_input_channels=a.graph_input_channels, graph_channels=a.graph_channels,
        graph_norm_groups=a.graph_norm_groups, num_prompts=a.num_prompts, prompt_dropout=a.prompt_dropout,
        project_equal_widths=a.project_equal_widths, fold_grid=a.fold_grid, fold_hidden=a.fold_hidden,
        fold_channels=a.fold_channels, fold_seed_scale=a.fold_seed_scale,
        embed_first_channels=a.embed_first_channels, embed_second_hidden=a.embed_second_hidden)


def build_model(stage: str, recipe: ACTRecipe, teacher: VisionTransformer | None = None,
                autoencoder: tuple[ACTRecipe, dict[str, torch.Tensor]] | None = None) -> torch.nn.Module:
    """The model of `stage`: stage I around `teacher`; the distillation student with the frozen
    stage-I model `autoencoder` = (its recipe, its trained state dict) around `teacher`; or
    Point-MAE. Raises ValueError for impossible settings."""
    if stage == "autoencoder":
        return build_autoencoder(recipe, teacher)
    encoder = PointTransformerEncoder(**encoder_config(recipe))
    if stage == "mae":
        m = recipe.mae
        return PointMAE(encoder, m.mask_ratio, m.mask_type, m.decoder_depth, m.decoder_num_heads,
                        m.decoder_drop_path)
    target_recipe, target_state = autoencoder
    target = build_autoencoder(target_recipe, teacher)
    target.load_state_dict(target_state)
    d = recipe.distill
    return ACTDistillation(encoder, target, d.mask_ratio, d.mask_type, d.decoder_depth, d.decoder_num_heads,
                           d.decoder_drop_path, d.target_codes)


def _build_model(stage: str, recipe: ACTRecipe, inputs: _Inputs, where: str | Path) -> torch.nn.Module:
    """`build_model` for the checked inputs; impossible settings (e.g. a width not divisible by
    the heads) are an InputError naming the recipe."""
    teacher = inputs.teacher.model if inputs.teacher is not None else None
    autoencoder = (inputs.autoencoder_recipe, inputs.autoencoder_state) if stage == "distill" else None
    try:
        return build_model(stage, recipe, teacher, autoencoder)
    except ValueError as error:
        raise InputError(f"impossible model settings: {error}", where) from None


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two AdamW groups, as the reference: no weight decay for biases,
    1-D tensors (norms), and learned tokens (cls, mask and prompt tokens)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        plain = parameter.ndim <= 1 or name.endswith(".bias") or "token" in name or name.endswith(".prompts")
        (no_decay if plain else decay).append(parameter)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def learning_rate(step: int, steps_per_epoch: int, base_lr: float, recipe: ACTRecipe) -> float:
    """The reference's schedule (timm CosineLRScheduler in epochs), evaluated per step: a linear
    warm-up from warmup_lr over warmup_epochs, then lr_min + (lr - lr_min)(1 + cos(pi t / T)) / 2
    at epoch t of T."""
    t = recipe.train
    epoch = step / steps_per_epoch
    if epoch < t.warmup_epochs:
        return t.warmup_lr + epoch * (base_lr - t.warmup_lr) / t.warmup_epochs
    return t.min_lr + 0.5 * (base_lr - t.min_lr) * (1.0 + math.cos(math.pi * epoch / t.epochs))


def train_transform(recipe: ACTRecipe, stage: str) -> Compose | None:
    """The stage's augmentation: Point-MAE / ACT's scale-and-translate (and optionally a rotation
    about the up axis), or none."""
    if not _stage_section(recipe, stage).augment:
        return None
    d = recipe.data
    steps = [RandomScale((d.scale_low, d.scale_high), anisotropic=True),
             RandomShift(((-d.translate, d.translate),) * 3)]
    if d.rotate:
        steps.insert(0, RandomRotate((-1.0, 1.0), axis=d.up_axis, center=(0.0, 0.0, 0.0), always_apply=True))
    return Compose(steps)


# --- training ----------------------------------------------------------------------------------


def _train(opts: PretrainOptions, setup: RunSetup[ACTRecipe], inputs: _Inputs,
           net: torch.nn.Module) -> ACTRecipe:
    device, dist, run, recipe, checkpoint = setup.device, setup.dist, setup.run, setup.recipe, setup.checkpoint
    stage, section = opts.stage, _stage_section(recipe, opts.stage)

    model = net = net.to(device)
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=stage == "mae")  # Point-MAE's pretraining leaves the cls token unused

    def batches_of(epoch: int) -> list[np.ndarray]:
        return epoch_batches(len(inputs.train), section.batch_size, opts.seed, epoch, dist.rank, dist.world_size)

    steps_per_epoch = len(batches_of(0))
    optimizer = torch.optim.AdamW(parameter_groups(net, section.weight_decay), lr=section.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate(step, steps_per_epoch, section.lr, recipe) / section.lr)
    state = TrainState()
    if checkpoint is not None:
        state = restore(checkpoint, model, optimizer, scheduler, device)
        console.print(f"resuming {run.last} at epoch {state.epoch}, step {state.step}")

    transform = train_transform(recipe, stage)

    def batches_for_epoch(epoch: int):
        loader = point_loader(PointBatches(inputs.train, batches_of(epoch), transform, opts.seed, epoch),
                              recipe.data.num_workers)
        for batch in loader:
            yield batch.to(device)

    loss_fn = loss_function(stage, recipe)
    progress = {"step": state.step}  # optimiser steps taken, for the schedules during validation

    def tracked_loss(model: torch.nn.Module, batch: PointBatch, step: int) -> StepResult:
        progress["step"] = step + 1
        return loss_fn(model, batch, step)

    validate = None
    if inputs.val is not None:
        names = ("loss", "reconstruction", "kl") if stage == "autoencoder" else ("loss",)
        validate = _validator(net, loss_fn, names, inputs.val, section.batch_size, recipe.data.num_workers,
                              opts.seed, device, dist, lambda: progress["step"])

    def checkpoint_extra() -> dict[str, Any]:
        extra: dict[str, Any] = {"config": to_dict(recipe), "stage": stage, "seed": opts.seed,
                                 "data": [str(p) for p in opts.data], "num_items": len(inputs.train)}
        if opts.crop is not None:
            extra["crop"] = opts.crop
        if inputs.teacher is not None:
            extra |= {"teacher": inputs.teacher.spec, "teacher_digest": inputs.teacher.digest}
        if stage == "distill":
            extra |= {"autoencoder_run": str(inputs.autoencoder_run),
                      "autoencoder_digest": inputs.autoencoder_digest}
        if stage != "autoencoder":
            extra |= {"encoder": net.encoder.state_dict(), "encoder_config": encoder_config(recipe)}
        return extra

    loop = LoopConfig(recipe.train.epochs, section.clip_grad, recipe.train.amp, recipe.train.log_every,
                      recipe.train.eval_every, monitor="loss", monitor_mode="min", unit="obj")
    state = train(model, optimizer, scheduler, tracked_loss, batches_for_epoch, steps_per_epoch, validate,
                  run, loop, state, device, dist, checkpoint_extra)
    check_ranks_agree(model, state, run, dist)
    if dist.is_main:
        where = "; the student encoder is under 'encoder'" if stage != "autoencoder" else ""
        console.print(f"done: {state.epoch} epochs, {state.step} steps; checkpoints in {run.path}{where}")
    return recipe


def loss_function(stage: str, recipe: ACTRecipe):
    """loss_fn(model, batch, step) -> StepResult for the stage."""
    a = recipe.autoencoder

    def autoencoder(model: torch.nn.Module, batch: PointBatch, step: int) -> StepResult:
        temperature = cosine_schedule(step, a.temperature_start, a.temperature_end, a.temperature_steps)
        kl_weight = cosine_schedule(step, 0.0, a.kl_weight, a.kl_steps, a.kl_delay)
        reconstruction, kl = autoencoder_losses(model(batch.points, temperature))
        return StepResult(reconstruction + kl_weight * kl, size=len(batch.points),
                          metrics={"reconstruction": float(reconstruction.detach()), "kl": float(kl.detach()),
                                   "temperature": temperature, "kl_weight": kl_weight})

    def distill(model: torch.nn.Module, batch: PointBatch, step: int) -> StepResult:
        prediction, target = model(batch.points)
        return StepResult(cosine_loss(prediction, target), size=len(batch.points))

    def mae(model: torch.nn.Module, batch: PointBatch, step: int) -> StepResult:
        prediction, target = model(batch.points)
        return StepResult(patch_chamfer(prediction, target, "l2"), size=len(batch.points))

    return {"autoencoder": autoencoder, "distill": distill, "mae": mae}[stage]


def _validator(net: torch.nn.Module, loss_fn, names: tuple[str, ...], source: PointSource, batch_size: int,
               num_workers: int, seed: int, device: torch.device, dist, current_step):
    """validate() -> {name: held-out value}: the stage's loss (and the `names` metrics) over every
    held-out cloud, in eval mode, without augmentation, with the same masks and noise every time
    (drawn from a generator seeded by `seed`, leaving the training generators untouched)."""
    batches = ordered_batches(len(source), batch_size, dist.rank, dist.world_size)

    def validate() -> dict[str, float]:
        net.eval()
        sums = torch.zeros(len(names) + 1, dtype=torch.float64)  # weighted sums, then the count
        devices = [device] if device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for batch in point_loader(PointBatches(source, batches, None, seed, 0), num_workers):
                result = loss_fn(net, batch.to(device), current_step())
                values = {"loss": float(result.loss), **result.metrics}
                sums += torch.tensor([values[name] * result.size for name in names] + [result.size],
                                     dtype=torch.float64)
        net.train()
        totals = all_reduce_sum(sums)
        return {name: float(totals[i] / max(float(totals[-1]), 1.0)) for i, name in enumerate(names)}

    return validate
