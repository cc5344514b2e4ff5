"""`pptkit finetune`: object classification on a pretrained point-patch Transformer.

Three modes over one backbone (`model.mode`, `--mode`):

- `gst` — PointGST (Liang et al., arXiv 2410.08114): the backbone is frozen, its BatchNorm
  statistics included, and only the spectral adapters beside every block's feed-forward
  branch, the head and (as the reference) the cls token and its position train;
- `full` — everything trains (the usual full fine-tuning, no adapters);
- `linear` — only the head trains.

The backbone is the student encoder of any `pptkit pretrain` checkpoint ("encoder" state dict
in the `pptkit.models.point_transformer` key layout, "encoder_config" its constructor
arguments). The run folder follows every training stage's conventions; at the end the best
model's trained tensors (those of the mode, plus any encoder tensor the backbone file lacks)
go into `RUN_DIR/task.safetensors` with their config and the backbone's content hash, so one
backbone file serves many small task files and `pptkit eval` refuses a task over the wrong one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pptkit.config import from_dict, to_dict, to_toml
from pptkit.data.store import open_store
from pptkit.data.transforms import Compose, RandomRotate, RandomScale, RandomShift
from pptkit.engine.checkpoint import find_checkpoint, load_checkpoint, state_digest
from pptkit.engine.distributed import DistInfo, all_reduce_sum, cleanup
from pptkit.engine.object_batches import PointBatch, PointBatches, PointSource, epoch_batches, ordered_batches, point_loader
from pptkit.engine.setup import RunOptions, RunSetup, open_run
from pptkit.engine.trainer import LoopConfig, StepResult, TrainState, check_ranks_agree, restore, train
from pptkit.errors import InputError
from pptkit.eval.metrics import ConfusionMatrix, classification_scores
from pptkit.fileio import atomic_path
from pptkit.models.point_classifier import PointTransformerClassifier
from pptkit.models.point_transformer import PointTransformerEncoder
from pptkit.models.spectral_adapter import SpectralAdapters
from pptkit.progress import console
from pptkit.stages.gst_recipe import DataConfig, FinetuneRecipe, TrainConfig
from pptkit.stages.joint_train import parse_named_paths

MODES = ("gst", "full", "linear")
ROLES = ("train", "val")
TASK_FILE = "task.safetensors"
TASK_FORMAT = "pptkit-task/1"
# Encoder tensors a backbone file may lack: Point-MAE's pretraining encoder has no cls token.
OPTIONAL_ENCODER_KEYS = frozenset({"cls_token", "cls_pos"})


@dataclass
class FinetuneOptions(RunOptions):
    recipe: Path | None
    checkpoint: Path | None  # pretrain run folder or checkpoint file; on --resume the run's own by default
    data: list[str]  # train=PATH.h5 (required), val=PATH.h5
    out: Path
    mode: str | None = None  # overrides model.mode


# --- the backbone ------------------------------------------------------------------------------


@dataclass
class Backbone:
    """A pretrained encoder as its file holds it."""

    path: Path  # the checkpoint file
    state: dict[str, torch.Tensor]  # "encoder": the state dict, in the point_transformer key layout
    config: dict[str, Any]  # "encoder_config": PointTransformerEncoder's constructor arguments
    digest: str  # state_digest(state)
    crop: int | None = None  # points per scene crop it was pretrained on (None: objects)
    num_points: int | None = None  # points per pretraining sample, when the file records it


def load_backbone(path: Path) -> Backbone:
    """The encoder of a pretrain run folder (its last.pt) or checkpoint file; InputError when
    the file is not a checkpoint or holds no encoder."""
    file = find_checkpoint(path, prefer=("last.pt", "best.pt"))
    checkpoint = load_checkpoint(file)
    state = checkpoint.get("encoder") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        hint = " (a finetune run: give the pretrain run it started from)" if isinstance(checkpoint, dict) \
            and "task_keys" in checkpoint else ""
        raise InputError("holds no 'encoder' state dict: give a `pptkit pretrain --stage distill|mae` run or "
                         f"checkpoint, or one with 'encoder' and 'encoder_config'{hint}", file)
    if not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise InputError("'encoder' must map parameter names to tensors", file, where="encoder")
    config = checkpoint.get("encoder_config")
    if not isinstance(config, dict):
        raise InputError("holds no 'encoder_config' (the encoder's constructor arguments)", file)
    crop = checkpoint.get("crop")
    recipe = checkpoint.get("config")
    data = recipe.get("data") if isinstance(recipe, dict) else None
    num_points = data.get("num_points") if isinstance(data, dict) else None
    return Backbone(file.resolve(), state, dict(config), state_digest(state),
                    crop if isinstance(crop, int) else None, num_points if isinstance(num_points, int) else None)


def encoder_from_config(encoder_config: Mapping[str, Any], where: Path, **overrides: Any) -> PointTransformerEncoder:
    """The encoder of `encoder_config` (with `overrides`); InputError naming `where` when the
    config cannot build one."""
    try:
        return PointTransformerEncoder(**{**encoder_config, **overrides})
    except (TypeError, ValueError) as error:
        raise InputError(f"cannot build the encoder: {error}", where, where="encoder_config") from None


def build_encoder(encoder_config: Mapping[str, Any], recipe: FinetuneRecipe, where: Path) -> PointTransformerEncoder:
    """The encoder of `encoder_config` with the recipe's patches and drop-path (its weights do not
    depend on them)."""
    return encoder_from_config(encoder_config, where, drop_path_rate=recipe.model.drop_path_rate,
                               num_groups=recipe.patches.num_groups, group_size=recipe.patches.group_size)


def load_encoder_state(encoder: PointTransformerEncoder, backbone: Backbone) -> None:
    """Load the backbone's weights; only the cls token and its position may be missing."""
    try:
        missing, unexpected = encoder.load_state_dict(backbone.state, strict=False)
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[-1].strip()
        raise InputError(f"encoder weights do not fit encoder_config: {detail}", backbone.path,
                         where="encoder") from None
    if unexpected:
        raise InputError(f"unexpected encoder key '{unexpected[0]}' ({len(unexpected)} in all)", backbone.path,
                         where="encoder")
    required = [key for key in missing if key not in OPTIONAL_ENCODER_KEYS]
    if required:
        raise InputError(f"encoder key '{required[0]}' is missing ({len(required)} in all)", backbone.path,
                         where="encoder")


# --- the model -------------------------------------------------------------------------------


def build_classifier(encoder: PointTransformerEncoder, recipe: FinetuneRecipe, num_classes: int
                     ) -> PointTransformerClassifier:
    """Encoder + head (+ one spectral adapter per block in gst mode), trainable per the mode."""
    m, a = recipe.model, recipe.model.adapter
    adapters = None
    if m.mode == "gst":
        adapters = SpectralAdapters(len(encoder.blocks), encoder.embed_dim, a.rank, a.scale, a.dropout, a.transform)
    model = PointTransformerClassifier(encoder, num_classes, m.head.hidden, m.head.dropout, adapters, a.local_size,
                                       a.laplacian == "normalized", a.min_distance, a.morton_bits)
    model.requires_grad_(m.mode == "full")
    model.head.requires_grad_(True)
    if adapters is not None:
        adapters.requires_grad_(True)
        if m.train_cls_tokens:
            encoder.cls_token.requires_grad_(True)
            encoder.cls_pos.requires_grad_(True)
    return model


def parameter_counts(model: torch.nn.Module) -> dict[str, float]:
    """Trainable and total parameters, and the trainable share in percent."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total}


def task_keys(model: torch.nn.Module, backbone_keys: set[str]) -> list[str]:
    """The model's state-dict entries a task file holds: trained parameters, the buffers of
    modules with trained parameters (e.g. the head's BatchNorm statistics), and the encoder
    entries the backbone file lacks (e.g. an initialised cls token)."""
    keys = []
    for key in model.state_dict():
        owner, _, name = key.rpartition(".")
        module = model.get_submodule(owner)
        own = dict(module.named_parameters(recurse=False))
        trained = own[name].requires_grad if name in own else any(p.requires_grad for p in own.values())
        lacking = key.startswith("encoder.") and key[len("encoder."):] not in backbone_keys
        if trained or lacking:
            keys.append(key)
    return keys


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters in two AdamW groups, as the reference: biases, 1-D tensors (norms)
    and tokens take no weight decay."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            plain = parameter.ndim <= 1 or name.endswith(".bias") or "token" in name
            (no_decay if plain else decay).append(parameter)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def learning_rate(step: int, steps_per_epoch: int, base_lr: float, t: TrainConfig) -> float:
    """The reference's schedule (timm's CosineLRScheduler in epochs), evaluated per step: linear
    warm-up from warmup_lr over warmup_epochs, then min_lr + (lr - min_lr)(1 + cos(pi e / E)) / 2
    at epoch e of E."""
    epoch = step / steps_per_epoch
    if epoch < t.warmup_epochs:
        return t.warmup_lr + epoch * (base_lr - t.warmup_lr) / t.warmup_epochs
    return t.min_lr + 0.5 * (base_lr - t.min_lr) * (1.0 + math.cos(math.pi * epoch / t.epochs))


# --- data ------------------------------------------------------------------------------------


class RandomSubset:
    """Keep `size` of the points, uniformly at random, in their order (the reference draws 1,024
    of the 1,200 farthest points of every training object)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, data: dict, rng: np.random.Generator) -> dict:
        coord = data["coord"]
        if len(coord) <= self.size:
            return data
        return {**data, "coord": coord[np.sort(rng.choice(len(coord), self.size, replace=False))]}


def scale_translate(d: DataConfig) -> list:
    """Point-MAE's PointcloudScaleAndTranslate: per-axis scale, then per-axis shift."""
    return [RandomScale((d.scale_low, d.scale_high), anisotropic=True), RandomShift(((-d.translate, d.translate),) * 3)]


def train_transform(d: DataConfig) -> Compose | None:
    """The training augmentation: a random subset of the FPS pool, then the recipe's augmentation."""
    steps: list = [RandomSubset(d.num_points)] if d.fps_pool else []
    if d.augment == "scale_translate":
        steps += scale_translate(d)
    elif d.augment == "rotate":
        steps.append(RandomRotate((-1.0, 1.0), axis=d.up_axis, center=(0.0, 0.0, 0.0), always_apply=True))
    return Compose(steps) if steps else None


def vote_transform(d: DataConfig) -> Compose:
    """One voting view, as the reference's test-time views: a random subset of the FPS pool
    (when there is one), then scale-and-translate."""
    return Compose(([RandomSubset(d.num_points)] if d.fps_pool else []) + scale_translate(d))


def check_object_store(path: Path, points: int, field_name: str) -> tuple[str, ...]:
    """An object store holding at least `points` points per object; its class names."""
    f, meta = open_store(path)
    f.close()
    if meta.kind != "object":
        raise InputError(f"holds {meta.kind}s; finetune classifies objects: give an object store "
                         "(pptkit preprocess --dataset modelnet40 | scanobjectnn)", path)
    if meta.num_points < points:
        raise InputError(f"objects hold {meta.num_points} points, fewer than {field_name} = {points}", path)
    if not meta.class_names:
        raise InputError("names no classes", path)
    return meta.class_names


def object_sources(path: Path, d: DataConfig, option: str, pooled: bool) -> PointSource:
    """The objects of `path`, `num_points` farthest points each, or the FPS pool when `pooled`."""
    size, field_name = (d.fps_pool, "data.fps_pool") if pooled and d.fps_pool else (d.num_points, "data.num_points")
    check_object_store(path, size, field_name)
    return PointSource([path], size, "fps", None, option)


def collect_logits(net: torch.nn.Module, source: PointSource, batches: list[np.ndarray], transform, seed: int,
                   view: int, num_workers: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool indices, float32 logits on the CPU) of the objects in `batches`, in eval mode, one
    view: object i is drawn with default_rng([seed, view, i])."""
    indices, logits = [], []
    with torch.no_grad():
        for batch in point_loader(PointBatches(source, batches, transform, seed, view), num_workers):
            logits.append(net(batch.points.to(device)).float().cpu())
            indices.append(batch.index)
    return torch.cat(indices), torch.cat(logits)


# --- the stage -------------------------------------------------------------------------------


@dataclass
class _Inputs:
    """Everything checked before the run folder is touched."""

    backbone: Backbone
    train: PointSource
    val: PointSource | None
    class_names: tuple[str, ...]
    data: dict[str, Path]


def run_finetune(opts: FinetuneOptions) -> FinetuneRecipe:
    if opts.mode is not None and opts.mode not in MODES:
        raise InputError(f"unknown mode '{opts.mode}' (use {' | '.join(MODES)})", "--mode")
    overrides = list(opts.overrides) + ([f"model.mode={json.dumps(opts.mode)}"] if opts.mode else [])
    setup = open_run(opts.out, opts.resume, opts.recipe, FinetuneRecipe, overrides, opts.device)
    inputs = _check_inputs(opts, setup)
    setup.run.start(to_toml(setup.recipe), resume_step=None if setup.checkpoint is None else setup.checkpoint["step"])
    try:
        return _train(opts, setup, inputs)
    finally:
        setup.run.close()
        cleanup()


def _check_inputs(opts: FinetuneOptions, setup: RunSetup[FinetuneRecipe]) -> _Inputs:
    recipe, checkpoint, dist = setup.recipe, setup.checkpoint, setup.dist
    source = opts.recipe or "--set"
    d, p = recipe.data, recipe.patches
    if max(p.num_groups, p.group_size) > d.num_points:
        raise InputError(f"{p.num_groups} patches of {p.group_size} points need at least "
                         f"{max(p.num_groups, p.group_size)} points per object, data.num_points is {d.num_points}",
                         source, where="patches")
    if d.fps_pool and d.fps_pool < d.num_points:
        raise InputError(f"data.fps_pool ({d.fps_pool}) must be 0 or at least data.num_points ({d.num_points})",
                         source, where="data.fps_pool")
    if checkpoint is not None and checkpoint.get("stage") != "finetune":
        raise InputError("is not a finetune run", setup.run.last)

    data = parse_named_paths(opts.data, "--data")
    for name in data:
        if name not in ROLES:
            raise InputError(f"unknown role '{name}' (use --data train=PATH.h5 [--data val=PATH.h5])", "--data")
    if "train" not in data:
        raise InputError("give the training objects as --data train=PATH.h5", "--data")

    if opts.checkpoint is None and checkpoint is None:
        raise InputError("give the pretrained backbone: a pretrain run folder or checkpoint", "--checkpoint")
    backbone = load_backbone(opts.checkpoint if opts.checkpoint is not None else Path(checkpoint["backbone_path"]))
    if checkpoint is not None and checkpoint["backbone_sha256"] != backbone.digest:
        raise InputError("this backbone differs from the one the run started with", backbone.path)
    encoder = build_encoder(backbone.config, recipe, backbone.path)
    load_encoder_state(encoder, backbone)

    train_source = object_sources(data["train"], d, "--data", pooled=True)
    class_names = tuple(train_source.class_names)
    val_source = None
    if "val" in data:
        val_source = object_sources(data["val"], d, "--data", pooled=False)
        if tuple(val_source.class_names) != class_names:
            raise InputError(f"class names differ from the training store's ({len(val_source.class_names)} vs "
                             f"{len(class_names)} classes)", data["val"])
    global_batch = recipe.train.batch_size * dist.world_size
    if len(train_source) < global_batch:
        raise InputError(f"{len(train_source)} training objects are fewer than one global batch ({global_batch} = "
                         f"train.batch_size x {dist.world_size} processes)", data["train"])
    if checkpoint is not None:
        if checkpoint["num_items"] != len(train_source) or list(checkpoint["class_names"]) != list(class_names):
            raise InputError("the training store differs from the one the run started with (objects or classes)",
                             data["train"])
    return _Inputs(backbone, train_source, val_source, class_names, data)


def _train(opts: FinetuneOptions, setup: RunSetup[FinetuneRecipe], inputs: _Inputs) -> FinetuneRecipe:
    device, dist, run, recipe, checkpoint = setup.device, setup.dist, setup.run, setup.recipe, setup.checkpoint
    t, d, mode = recipe.train, recipe.data, recipe.model.mode

    torch.manual_seed(opts.seed)
    encoder = build_encoder(inputs.backbone.config, recipe, inputs.backbone.path)
    load_encoder_state(encoder, inputs.backbone)
    net = build_classifier(encoder, recipe, len(inputs.class_names)).to(device)
    counts = parameter_counts(net)
    keys = task_keys(net, set(inputs.backbone.state))
    model: torch.nn.Module = net
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    def batches_of(epoch: int) -> list[np.ndarray]:
        return epoch_batches(len(inputs.train), t.batch_size, opts.seed, epoch, dist.rank, dist.world_size)

    steps_per_epoch = len(batches_of(0))
    optimizer = torch.optim.AdamW(parameter_groups(net, recipe.optim.weight_decay), lr=recipe.optim.lr)
    base_lr = recipe.optim.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate(step, steps_per_epoch, base_lr, t) / base_lr)
    state = TrainState()
    if checkpoint is not None:
        state = restore(checkpoint, model, optimizer, scheduler, device)
        console.print(f"resuming {run.last} at epoch {state.epoch}, step {state.step}")
    if dist.is_main:
        console.print(f"{mode}: {counts['trainable']:,} of {counts['total']:,} parameters trainable "
                      f"({counts['percent']:.2f}%)")
    if checkpoint is None:
        run.log({"step": 0, "epoch": 0, "split": "parameters", "mode": mode, **counts})

    # The farthest points of every object, once: later epochs (and validations) skip the FPS.
    for source in (inputs.train, inputs.val):
        if source is not None:
            source.cache_farthest_points()
    transform = train_transform(d)

    def batches_for_epoch(epoch: int):
        for batch in point_loader(PointBatches(inputs.train, batches_of(epoch), transform, opts.seed, epoch),
                                  d.num_workers):
            yield batch.to(device)

    def loss_fn(model: torch.nn.Module, batch: PointBatch, step: int) -> StepResult:
        logits = model(batch.points)
        loss = F.cross_entropy(logits, batch.labels)
        accuracy = (logits.detach().argmax(dim=1) == batch.labels).float().mean()
        return StepResult(loss, size=len(batch.points), metrics={"acc": float(accuracy)})

    validate = None
    if inputs.val is not None:
        validate = _validator(net, inputs.val, len(inputs.class_names), t.batch_size, d.num_workers, device, dist)

    extra = {"config": to_dict(recipe), "stage": "finetune", "mode": mode, "seed": opts.seed,
             "data": {name: str(path) for name, path in inputs.data.items()}, "num_items": len(inputs.train),
             "class_names": list(inputs.class_names), "backbone_path": str(inputs.backbone.path),
             "backbone_sha256": inputs.backbone.digest, "encoder_config": inputs.backbone.config,
             "parameters": counts, "task_keys": keys}
    loop = LoopConfig(t.epochs, t.clip_grad, t.amp, t.log_every, t.eval_every, monitor="acc", monitor_mode="max",
                      unit="obj")
    state = train(model, optimizer, scheduler, loss_fn, batches_for_epoch, steps_per_epoch, validate, run, loop,
                  state, device, dist, extra)
    check_ranks_agree(model, state, run, dist)
    if dist.is_main:
        best = load_checkpoint(run.best)
        task = {key: best["model"][key] for key in keys}
        path = run.path / TASK_FILE
        write_task_file(path, task, task_config(best, inputs.backbone))
        size = sum(v.numel() * v.element_size() for v in task.values())
        score = "" if best["best"] is None else f", val acc {100 * best['best']:.2f}%"
        console.print(f"done: {state.epoch} epochs, {state.step} steps; task file {path} ({len(task)} tensors, "
                      f"{size / 1024:.0f} KiB) from epoch {best['epoch']}{score}")
    return recipe


def _validator(net: PointTransformerClassifier, source: PointSource, num_classes: int, batch_size: int,
               num_workers: int, device: torch.device, dist: DistInfo):
    """validate() -> {"acc": OA, "macc": mean class accuracy, "loss"}: every held-out object once,
    its farthest num_points points, no augmentation, eval mode."""
    batches = ordered_batches(len(source), batch_size, dist.rank, dist.world_size)

    def validate() -> dict[str, float]:
        net.eval()
        index, logits = collect_logits(net, source, batches, None, 0, 0, num_workers, device)
        net.train()
        labels = torch.from_numpy(source.labels[index.numpy()])
        matrix = ConfusionMatrix(num_classes)
        matrix.update(logits.argmax(dim=1), labels)
        loss = F.cross_entropy(logits, labels, reduction="sum").double().reshape(1)
        totals = all_reduce_sum(torch.cat([torch.from_numpy(matrix.matrix).double().reshape(-1), loss,
                                           torch.tensor([float(len(labels))], dtype=torch.float64)]))
        counts = totals[:-2].round().long().reshape(num_classes, num_classes).numpy()
        scores = classification_scores(counts, [str(c) for c in range(num_classes)])
        return {"acc": scores.oa, "macc": scores.macc, "loss": float(totals[-2] / totals[-1])}

    return validate


# --- task files ------------------------------------------------------------------------------


def task_config(checkpoint: Mapping[str, Any], backbone: Backbone) -> dict[str, Any]:
    """What a task file records besides its tensors (from a finetune checkpoint)."""
    return {"format": TASK_FORMAT, "task": "classification", "mode": checkpoint["mode"],
            "recipe": checkpoint["config"], "encoder_config": checkpoint["encoder_config"],
            "class_names": list(checkpoint["class_names"]), "backbone_sha256": checkpoint["backbone_sha256"],
            "backbone_path": str(backbone.path), "parameters": checkpoint["parameters"],
            "epoch": checkpoint["epoch"], "val_acc": checkpoint["best"]}


def write_task_file(path: Path, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> None:
    """Tensors and config as safetensors (the config as JSON metadata), written atomically."""
    from safetensors.torch import save

    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"pptkit": json.dumps(config)})
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)


TASK_CONFIG_KEYS = ("mode", "recipe", "encoder_config", "class_names", "backbone_sha256", "backbone_path")


def load_task_model(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], backbone: Backbone | None,
                    where: Path) -> PointTransformerClassifier:
    """The classifier a task file describes: the backbone's weights (none needed in full mode),
    then the task's tensors; InputError when they do not make up the whole model."""
    recipe = from_dict(FinetuneRecipe, config["recipe"], str(where))
    encoder = build_encoder(config["encoder_config"], recipe, where)
    if backbone is not None:
        load_encoder_state(encoder, backbone)
    model = build_classifier(encoder, recipe, len(config["class_names"]))
    expected = model.state_dict()
    foreign = [key for key in tensors if key not in expected]
    if foreign:
        raise InputError(f"tensor '{foreign[0]}' does not belong to the model the file describes", where)
    covered = set(tensors) | ({f"encoder.{key}" for key in backbone.state} if backbone is not None else set())
    missing = [key for key in expected if key not in covered]
    if missing:
        raise InputError(f"lacks '{missing[0]}' ({len(missing)} tensors), and no backbone provides it", where)
    try:
        model.load_state_dict(dict(tensors), strict=False)
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[-1].strip()
        raise InputError(f"tensors do not fit the model the file describes: {detail}", where) from None
    return model


def read_task_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, config) of a task file; InputError when it is not one."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    if not path.is_file():
        raise InputError("task file not found", path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"not a readable safetensors file ({error})", path) from None
    try:
        config = json.loads(metadata["pptkit"])
    except (KeyError, json.JSONDecodeError):
        raise InputError("is not a pptkit task file (no 'pptkit' metadata)", path) from None
    if not isinstance(config, dict) or config.get("format") != TASK_FORMAT:
        raise InputError(f"unsupported task file format {config.get('format') if isinstance(config, dict) else None!r}"
                         f" (this pptkit reads {TASK_FORMAT})", path)
    absent = [key for key in TASK_CONFIG_KEYS if key not in config]
    if absent:
        raise InputError(f"task config lacks '{absent[0]}'", path)
    return tensors, config
