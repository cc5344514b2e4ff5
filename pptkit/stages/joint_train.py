"""`pptkit joint-train`: Point Prompt Training of one model on several datasets at once."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import torch.nn.functional as F

from pptkit.config import to_dict, to_toml
from pptkit.data.classes import IGNORE_INDEX
from pptkit.data.dataset import SceneDataset
from pptkit.data.transforms import eval_transforms, mix_scenes, train_transforms
from pptkit.engine.batch import Batch, collate
from pptkit.engine.checkpoint import load_checkpoint, save_checkpoint
from pptkit.engine.distributed import cleanup
from pptkit.engine.inference import evaluate_dataset
from pptkit.engine.run_dir import RunDir
from pptkit.engine.sampler import ScheduledBatch, epoch_schedule
from pptkit.engine.schedules import lr_schedule
from pptkit.engine.setup import RunOptions, RunSetup, open_run
from pptkit.engine.trainer import LoopConfig, StepResult, TrainState, check_ranks_agree, restore, train
from pptkit.errors import InputError
from pptkit.models.label_space import UnionLabelSpace
from pptkit.models.pdnorm import split_prompt_parameters
from pptkit.progress import console
from pptkit.stages.ppt_model import build_model, text_embeddings
from pptkit.stages.ppt_recipe import DatasetTransformConfig, PPTRecipe


@dataclass
class JointTrainOptions(RunOptions):
    recipe: Path | None
    data: list[str]  # NAME=PATH.h5, training splits
    out: Path
    val: list[str] = field(default_factory=list)  # NAME=PATH.h5, validation splits


def parse_named_paths(items: list[str], option: str) -> dict[str, Path]:
    """`NAME=PATH` options as an ordered dict; every path must exist."""
    named: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise InputError(f"expected NAME=PATH.h5, got '{item}'", option)
        if name in named:
            raise InputError(f"dataset '{name}' given twice", option)
        if not Path(path).is_file():
            raise InputError(f"file not found (for dataset '{name}')", path)
        named[name] = Path(path)
    return named


class EpochBatches(torch.utils.data.Dataset):
    """The epoch's scheduled batches as a map-style dataset, so DataLoader workers can build them.

    Each sample's augmentation draws from its own generator seeded by (seed, epoch, dataset key,
    pass, index), and the Mix3D decision of a batch by its first sample: the data a step sees
    depends neither on worker count nor on where a run resumed, and a dataset (keyed by its name)
    sees the same augmentation whether it is trained alone or jointly.
    """

    def __init__(self, datasets: list[SceneDataset], schedule: list[ScheduledBatch], transforms: list,
                 keys: list[int], seed: int, epoch: int, mix_prob: float = 0.0):
        self.datasets, self.schedule, self.transforms, self.keys = datasets, schedule, transforms, keys
        self.seed, self.epoch, self.mix_prob = seed, epoch, mix_prob

    def __len__(self) -> int:
        return len(self.schedule)

    def __getitem__(self, step: int) -> tuple[int, list[dict]]:
        batch = self.schedule[step]
        key = self.keys[batch.dataset]
        samples = []
        for i in batch.indices:
            sample = self.datasets[batch.dataset][i]
            rng = np.random.default_rng([self.seed, self.epoch, key, batch.pass_index, i])
            samples.append(self.transforms[batch.dataset](sample, rng))
        mix = np.random.default_rng([self.seed, self.epoch, key, batch.pass_index, batch.indices[0], 1 << 32])
        if len(samples) > 1 and mix.random() < self.mix_prob:
            samples = [mix_scenes(samples[k:k + 2]) for k in range(0, len(samples), 2)]
        return batch.dataset, samples


def dataset_key(name: str) -> int:
    """A dataset's shuffling and augmentation key: a checksum of its name, not its position."""
    return zlib.crc32(name.encode())


def dataset_transforms(recipe: PPTRecipe, names: list[str]) -> list:
    """Each dataset's training chain (its own crop), or the evaluation chain without augmentation."""
    d = recipe.data
    if not d.augment:
        return [eval_transforms(d.grid_size) for _ in names]
    chains = []
    for name in names:
        own = d.transforms.get(name, DatasetTransformConfig())
        chains.append(train_transforms(d.grid_size, point_max=min(own.point_max, d.point_max),
                                       crop_rate=own.crop_rate))
    return chains


def run_joint_train(opts: JointTrainOptions) -> PPTRecipe:
    setup = open_run(opts.out, opts.resume, opts.recipe, PPTRecipe, opts.overrides, opts.device)
    dist, run, recipe, checkpoint = setup.dist, setup.run, setup.recipe, setup.checkpoint

    # Every input is checked before anything is written.
    train_paths = parse_named_paths(opts.data, "--data")
    val_paths = parse_named_paths(opts.val, "--val")
    if not train_paths:
        raise InputError("give at least one training set as --data NAME=PATH.h5", "--data")
    names = list(train_paths)
    for name in names:
        if name not in recipe.data.ratios:
            raise InputError(f"no ratio for dataset '{name}' (add it to [data] ratios)", opts.recipe or "--set",
                             where=f"data.ratios.{name}")
    for name in val_paths:
        if name not in train_paths:
            raise InputError(f"validation set '{name}' is not one of the trained datasets {names}", "--val")
    train_sets = [SceneDataset(train_paths[n], rows=recipe.data.train_on) for n in names]
    for n, ds in zip(names, train_sets):
        if recipe.data.train_on == "points" and not ds.has_points and dist.is_main:
            console.print(f"warning: {train_paths[n]}: store format {ds.meta.format_version} holds no original "
                          f"points; '{n}' trains on its voxels (preprocess it again for format 2)")
    val_sets = {n: SceneDataset(p, with_points=True) for n, p in val_paths.items()}
    for n, ds in val_sets.items():
        if tuple(ds.class_names) != tuple(train_sets[names.index(n)].class_names):
            raise InputError(f"class names differ from the training file's for '{n}'", val_paths[n])
    global_batch = recipe.data.batch_size * dist.world_size
    for n, ds in zip(names, train_sets):
        if len(ds) < global_batch:
            raise InputError(f"dataset '{n}' has {len(ds)} scenes, fewer than one global batch "
                             f"({global_batch} = data.batch_size x {dist.world_size} processes)", train_paths[n])
    epoch_by = recipe.data.epoch_by or next((n for n in recipe.data.ratios if n in names), names[0])
    if epoch_by not in names:
        raise InputError(f"data.epoch_by names '{epoch_by}', which is not a trained dataset {names}",
                         opts.recipe or "--set", where="data.epoch_by")
    class_names = {n: list(ds.class_names) for n, ds in zip(names, train_sets)}
    if checkpoint is not None:
        _check_same_datasets(checkpoint, names, class_names, run.last)
    labels = UnionLabelSpace.from_class_names(class_names)
    if opts.verbose and dist.is_main:
        console.print(labels.describe())

    run.start(to_toml(recipe), resume_step=None if checkpoint is None else checkpoint["step"])
    try:
        return _train(opts, setup, train_sets, val_sets, names, epoch_by, class_names, labels)
    finally:
        run.close()
        cleanup()


def _train(opts: JointTrainOptions, setup: RunSetup[PPTRecipe], train_sets: list[SceneDataset],
           val_sets: dict[str, SceneDataset], names: list[str], epoch_by: str,
           class_names: dict[str, list[str]], labels: UnionLabelSpace) -> PPTRecipe:
    device, dist, run, recipe, checkpoint = setup.device, setup.dist, setup.run, setup.recipe, setup.checkpoint
    transforms = dataset_transforms(recipe, names)
    keys = [dataset_key(n) for n in names]
    text = _text_embeddings(recipe, labels, run) if recipe.model.head == "language" else None

    torch.manual_seed(opts.seed)
    model = build_model(recipe.model, labels, names, text).to(device)
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)  # other datasets' norms and heads sit idle each step
    ratios = [recipe.data.ratios[n] for n in names]

    def schedule_for(epoch: int) -> list[ScheduledBatch]:
        return epoch_schedule([len(d) for d in train_sets], ratios, recipe.data.batch_size, opts.seed,
                              epoch, dist.rank, dist.world_size, main=names.index(epoch_by), keys=keys)

    steps_per_epoch = len(schedule_for(0))  # the same every epoch: it depends on sizes only
    optimizer, scheduler = _optimizer(model, recipe, steps_per_epoch * recipe.train.epochs)

    state = TrainState()
    if checkpoint is not None:
        state = restore(checkpoint, model, optimizer, scheduler, device)
        console.print(f"resuming {run.last} at epoch {state.epoch}, step {state.step}")

    def batches_for_epoch(epoch: int):
        mix_prob = recipe.data.mix_prob if recipe.data.augment else 0.0
        batches = EpochBatches(train_sets, schedule_for(epoch), transforms, keys, opts.seed, epoch, mix_prob)
        loader = epoch_loader(batches, recipe.data.num_workers)
        for dataset, samples in loader:
            yield collate(samples, dataset, device)

    def loss_fn(model: torch.nn.Module, batch: Batch, step: int) -> StepResult:
        # Per-voxel logits over this batch's dataset classes, scored per input row.
        row_logits = model(batch.input, batch.dataset).float()[batch.inverse]
        if (batch.target != IGNORE_INDEX).any():
            loss = F.cross_entropy(row_logits, batch.target, ignore_index=IGNORE_INDEX)
        else:  # nothing labelled in this crop: keep every rank's graph alive, learn nothing
            loss = row_logits.sum() * 0.0
        name = names[batch.dataset]
        return StepResult(loss, size=batch.input.feats.shape[0], counts={f"batches_{name}": 1},
                          tag={"dataset": name})

    def validate() -> dict[str, float]:
        scores = {}
        for n, ds in val_sets.items():
            result, _ = evaluate_dataset(model, ds, names.index(n), ds.class_names, recipe.data.grid_size,
                                         device, dist, description=f"val {n}")
            scores[f"miou_{n}"] = result.miou
        scores = {"miou": float(np.mean(list(scores.values()))), **scores}
        return scores

    extra = {"config": to_dict(recipe), "datasets": names, "class_names": class_names,
             "union_names": list(labels.union_names), "seed": opts.seed}
    loop = LoopConfig(recipe.train.epochs, recipe.train.clip_grad, recipe.train.amp,
                      recipe.train.log_every, recipe.train.eval_every, monitor="miou", unit="vox")
    state = train(model, optimizer, scheduler, loss_fn, batches_for_epoch, steps_per_epoch,
                  validate if val_sets else None, run, loop, state, device, dist, extra)
    check_ranks_agree(model, state, run, dist)
    if dist.is_main:
        console.print(f"done: {state.epoch} epochs, {state.step} steps; checkpoints in {run.path}")
    return recipe


def epoch_loader(batches: EpochBatches, num_workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over one epoch's scheduled batches, in order; works under fork and spawn."""
    return torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=num_workers,
                                       collate_fn=_as_built)


def _as_built(item: tuple[int, list[dict]]) -> tuple[int, list[dict]]:
    """DataLoader collate for batches that EpochBatches already assembled (a named function, so
    spawned workers can unpickle it)."""
    return item


def _check_same_datasets(checkpoint: dict, names: list[str], class_names: dict[str, list[str]], path: Path) -> None:
    """A resumed run must train the checkpoint's datasets, in its order, with its class lists."""
    saved = list(checkpoint["datasets"])
    if saved != names:
        raise InputError(f"--data datasets {names} differ from the checkpoint's {saved} "
                         "(same names, same order)", path)
    for name in names:
        if list(checkpoint["class_names"][name]) != class_names[name]:
            raise InputError(f"class names of dataset '{name}' differ from the checkpoint's", path)


def _text_embeddings(recipe: PPTRecipe, labels: UnionLabelSpace, run: RunDir) -> torch.Tensor:
    """Class-name embeddings, computed once and kept in the run folder (and in every checkpoint)."""
    path = run.path / "text_embeddings.pt"
    if path.is_file():
        stored = load_checkpoint(path)
        if stored["names"] == list(labels.union_names) and stored["template"] == recipe.model.prompt_template:
            return stored["embeddings"]
    embeddings = text_embeddings(recipe.model, list(labels.union_names))
    if run.writer:
        save_checkpoint(path, {"names": list(labels.union_names), "template": recipe.model.prompt_template,
                               "encoder": recipe.model.text_encoder, "embeddings": embeddings})
    return embeddings


def _optimizer(model, recipe: PPTRecipe, total_steps: int):
    """SGD with prompt-related parameters at a scaled rate, and the configured schedule."""
    o = recipe.optim
    prompt_params, other_params = split_prompt_parameters(model)
    groups = [{"params": other_params, "lr": o.lr}]
    if prompt_params:
        groups.append({"params": prompt_params, "lr": o.lr * o.prompt_lr_scale})
    optimizer = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                                nesterov=o.nesterov)
    return optimizer, lr_schedule(optimizer, o.scheduler, total_steps, o.pct_start, o.div_factor, o.final_div_factor)
