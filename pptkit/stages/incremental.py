"""`pptkit incremental`: add new classes to a trained scene model from scene-level tags alone.

FMWISS (Yu et al., "Foundation Model Drives Weakly Incremental Learning for Semantic
Segmentation", CVPR 2023) carried to point clouds. Step t starts from the step t-1 model (a
`joint-train` run whose label space excludes the new classes, or an earlier incremental run)
and trains on scenes that carry only tags, every batch:

1. the frozen step t-1 model gives old-class probabilities, language-aligned point embeddings
   and backbone features;
2. initial masks of the scene's tagged classes: where the old model is unsure, which tagged class
   by zero-shot text scores + a class-activation map learned from the tags (pptkit.models.pseudo_masks);
3. seed-guided refinement with frozen features (the step t-1 model's, or with `--encoder` a point
   Transformer pretrained on scene crops) and superpoints, fused with the initial masks;
4. the plug-in teacher head learns the fused masks (per-point BCE, positives and negatives
   weighted equally, + dense contrastive loss);
5. the student learns old classes from the step t-1 model and new classes from the teacher
   (hard/soft mix alpha, old-model/teacher weight beta), on scenes into which instances of
   old classes from a small memory were pasted (their labels are real).

Step 0 (the base model): `--write-base-store` writes a copy of a labelled store without the new
classes, for `pptkit joint-train` (recipes/incr-base-tiny.toml is such a recipe).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pptkit.config import from_dict, to_dict, to_toml
from pptkit.data.class_split import write_base_store
from pptkit.data.classes import IGNORE_INDEX
from pptkit.data.copy_paste import CopyPaste, MemoryBank, build_memory
from pptkit.data.dataset import SceneDataset
from pptkit.data.store import complete_groups, open_store
from pptkit.data.superpoints import superpoints
from pptkit.data.tags import canonical_class_name, classes_present, read_tags, tags_from_present
from pptkit.data.transforms import Compose, eval_transforms, train_transforms
from pptkit.engine.batch import scene_features
from pptkit.engine.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from pptkit.engine.distributed import cleanup
from pptkit.engine.inference import room_patch_features
from pptkit.engine.run_dir import RunDir
from pptkit.engine.sampler import epoch_schedule
from pptkit.engine.schedules import lr_schedule
from pptkit.engine.setup import RunOptions, RunSetup, open_run
from pptkit.engine.trainer import LoopConfig, StepResult, TrainState, check_ranks_agree, restore, train, unwrap
from pptkit.errors import InputError
from pptkit.models.incremental import (
    ClassActivationHead,
    IncrementalModel,
    PlugInTeacherHead,
    backbone_features,
    mil_pool,
)
from pptkit.models.label_space import UnionLabelSpace
from pptkit.models.pdnorm import split_prompt_parameters
from pptkit.models.point_transformer import PointTransformerEncoder
from pptkit.models.ppt import PointPromptModel
from pptkit.models.pseudo_masks import (
    NO_CLASS,
    activation_map,
    balanced_bce,
    dense_contrastive_loss,
    distillation_targets,
    fuse_masks,
    initial_labels,
    initial_scores,
    limit_labels,
    novelty,
    refine_masks,
    soft_cross_entropy,
    zero_shot_scores,
)
from pptkit.progress import console, track
from pptkit.sparse import SparseTensor, sparse_collate
from pptkit.stages.finetune import encoder_from_config, load_backbone, load_encoder_state
from pptkit.stages.incr_recipe import IncrementalRecipe
from pptkit.stages.ppt_model import build_model, text_embeddings
from pptkit.stages.ppt_recipe import ModelConfig, PPTRecipe


@dataclass
class IncrementalOptions(RunOptions):
    new_classes: str  # comma-separated class names
    data: str  # [NAME=]PATH.h5: the step-t scenes
    out: Path | None = None
    recipe: Path | None = None
    base: Path | None = None  # the step t-1 run folder (or a checkpoint file)
    tags: Path | None = None  # tags.json
    tags_from_labels: bool = False
    memory: int = 0  # instances kept per old class for copy-paste
    memory_data: Path | None = None  # labelled store to cut old-class instances from
    write_base_store: Path | None = None  # step 0: write the base store and stop
    encoder: Path | None = None  # pretrain run on scene crops: its patch tokens give the refinement's affinity


@dataclass
class BaseRun:
    """What a step needs from the step t-1 run: its model, label space and history."""

    path: Path  # the checkpoint file
    digest: str  # sha256 of that file
    model_cfg: ModelConfig
    datasets: list[str]
    class_names: dict[str, list[str]]
    state: dict[str, torch.Tensor]  # PointPromptModel state dict
    base_classes: dict[str, list[str]]  # step-0 classes of each incrementally trained dataset
    steps: dict[str, list[list[str]]]  # classes added at each earlier step, per dataset
    memory: MemoryBank | None  # the memory the run kept for the next step


@dataclass
class AffinityEncoder:
    """A frozen point-patch Transformer pretrained on scene crops, read over whole rooms."""

    model: PointTransformerEncoder
    crop: int  # points per pretraining crop
    num_points: int  # points the encoder saw per crop
    digest: str  # of its weights


@dataclass
class StepInputs:
    """Everything validated before the run folder is touched."""

    base: BaseRun
    dataset: str
    scenes: SceneDataset
    indices: list[int]  # store scenes that train (tagged with a new class)
    tags: np.ndarray  # (len(indices), K) bool
    new_classes: list[str]
    old_classes: list[str]
    label_map: np.ndarray | None  # store label -> model label, for data.supervision = "labels"
    memory: MemoryBank | None
    encoder: AffinityEncoder | None = None  # the refinement's feature space (None: the base model's)


# ---------------------------------------------------------------------------------------- inputs

def parse_class_list(text: str) -> list[str]:
    """'a, b,c' -> ['a', 'b', 'c']; empty or repeated names are an InputError."""
    names = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not n for n in names):
        raise InputError(f"expected comma-separated class names, got '{text}'", "--new-classes")
    keys = [canonical_class_name(n) for n in names]
    for i, key in enumerate(keys):
        if key in keys[:i]:
            raise InputError(f"class '{names[i]}' is given twice", "--new-classes")
    return names


def parse_store(item: str, option: str) -> tuple[str | None, Path]:
    """'[NAME=]PATH.h5' -> (NAME or None, path); the file must exist."""
    name, sep, path = item.partition("=")
    if not sep:
        name, path = None, item
    elif not name or not path:
        raise InputError(f"expected [NAME=]PATH.h5, got '{item}'", option)
    if not Path(path).is_file():
        raise InputError("file not found", path)
    return name, Path(path)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_base_run(path: Path) -> BaseRun:
    """The step t-1 model from a joint-train or incremental run folder (best.pt, else last.pt)."""
    ckpt_path = find_checkpoint(path)
    ckpt = load_checkpoint(ckpt_path)
    memory = None
    try:
        if "incremental" in ckpt:
            info = ckpt["incremental"]
            model_cfg = from_dict(ModelConfig, info["model"], str(ckpt_path))
            state = {k[len("student."):]: v for k, v in ckpt["model"].items() if k.startswith("student.")}
            base_classes, steps = dict(info["base_classes"]), {k: [list(s) for s in v] for k, v in info["steps"].items()}
            memory_file = ckpt_path.parent / "memory.pt"
            if memory_file.is_file():
                memory = MemoryBank.from_arrays(load_memory(memory_file))
        else:
            model_cfg = from_dict(PPTRecipe, ckpt["config"], str(ckpt_path)).model
            state = ckpt["model"]
            base_classes, steps = {}, {}
        datasets = list(ckpt["datasets"])
        class_names = {k: list(v) for k, v in ckpt["class_names"].items()}
    except KeyError as exc:
        raise InputError(f"not a joint-train or incremental checkpoint (missing {exc})", ckpt_path) from None
    if model_cfg.head != "language":
        raise InputError(f"the base model has a '{model_cfg.head}' head; incremental steps need the "
                         "language-guided head (model.head = \"language\") for zero-shot masks", ckpt_path)
    return BaseRun(ckpt_path, file_digest(ckpt_path), model_cfg, datasets, class_names, state, base_classes,
                   steps, memory)


def load_memory(path: Path) -> dict:
    """memory.pt as NumPy arrays (it holds tensors and a list of source names)."""
    raw = load_checkpoint(path)
    try:
        arrays = {k: raw[k].numpy() for k in ("coord", "color", "normal", "offsets", "labels")}
        arrays["sources"] = list(raw["sources"])
        arrays["class_names"] = list(raw["class_names"])
    except (KeyError, AttributeError) as exc:
        raise InputError(f"not a pptkit memory file ({exc})", path) from None
    return arrays


def save_memory(path: Path, memory: MemoryBank, class_names: list[str]) -> None:
    arrays = memory.to_arrays()
    save_checkpoint(path, {**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()
                              if k != "sources"}, "sources": arrays["sources"], "class_names": class_names})


def check_step_inputs(opts: IncrementalOptions, recipe: IncrementalRecipe, world_size: int) -> StepInputs:
    """Every input of a step checked (InputError, exit 2) before anything is written."""
    new_classes = parse_class_list(opts.new_classes)
    if opts.base is None:
        raise InputError("give the step t-1 run folder with --base", "--base")
    base = load_base_run(opts.base)
    name, path = parse_store(opts.data, "--data")
    scenes = SceneDataset(path)
    dataset = name or (scenes.dataset_name if scenes.dataset_name in base.datasets or len(base.datasets) != 1
                       else base.datasets[0])
    if dataset not in base.datasets:
        raise InputError(f"the base model was not trained on '{dataset}' (it knows {', '.join(base.datasets)}); "
                         "name the dataset as --data NAME=PATH.h5", "--data")
    old_classes = base.class_names[dataset]
    old_keys = {canonical_class_name(n) for n in old_classes}
    for cls in new_classes:
        if canonical_class_name(cls) in old_keys:
            raise InputError(f"the base run already knows class '{cls}': its label space must exclude the new "
                             "classes (train it on a store written with --write-base-store)", base.path)
    if opts.tags is not None and opts.tags_from_labels:
        raise InputError("give either --tags FILE or --tags-from-labels, not both", "--tags")
    label_map = None
    if opts.tags is not None:
        if recipe.data.supervision == "labels":
            raise InputError('data.supervision = "labels" trains on the store\'s labels: use --tags-from-labels',
                             "--tags")
        scene_names = [name for name, _ in stored_scenes(path, with_segment=False)]
        tagged = read_tags(opts.tags, scene_names, new_classes, old_classes)
        tags_by_index = {i: tagged.get(n, ()) for i, n in enumerate(scene_names)}
    elif opts.tags_from_labels:
        store_keys = [canonical_class_name(n) for n in scenes.class_names]
        missing = [c for c in new_classes if canonical_class_name(c) not in store_keys]
        if missing:
            raise InputError(f"--tags-from-labels: the store has no class {', '.join(missing)}", path)
        present = classes_present(((str(i), segment) for i, (_, segment) in enumerate(stored_scenes(path))),
                                  scenes.class_names, recipe.data.min_tag_voxels)
        tags_str = tags_from_present(present, new_classes)
        known = old_keys | {canonical_class_name(c) for c in new_classes}
        tags_by_index = {}
        for i in range(len(scenes)):
            future = [n for n in present[str(i)] if canonical_class_name(n) not in known]
            tags_by_index[i] = () if recipe.data.setting == "disjoint" and future else tags_str[str(i)]
        if recipe.data.supervision == "labels":
            label_map = store_label_map(scenes.class_names, old_classes + new_classes)
    else:
        raise InputError("give the scenes' tags: --tags tags.json, or --tags-from-labels for a labelled store",
                         "--tags")
    indices = [i for i in range(len(scenes)) if tags_by_index[i]]
    global_batch = recipe.data.batch_size * world_size
    if len(indices) < global_batch:
        raise InputError(f"{len(indices)} scenes are tagged with a new class, fewer than one global batch "
                         f"({global_batch} = data.batch_size x {world_size} processes)", opts.tags or path)
    new_keys = [canonical_class_name(c) for c in new_classes]
    tags = np.array([[key in {canonical_class_name(t) for t in tags_by_index[i]} for key in new_keys]
                     for i in indices], dtype=bool)
    memory = check_memory(opts, recipe, base, dataset, old_classes)
    encoder = None
    if opts.encoder is not None:
        if recipe.data.supervision != "tags" or not recipe.refine.enabled:
            raise InputError('is given but the recipe does not refine masks (refine.enabled = false or '
                             'data.supervision = "labels")', "--encoder")
        encoder = load_affinity_encoder(opts.encoder)
    return StepInputs(base, dataset, scenes, indices, tags, new_classes, old_classes, label_map, memory, encoder)


def load_affinity_encoder(path: Path) -> AffinityEncoder:
    """The encoder of a `pptkit pretrain --crop N` run (stage mae or distill); InputError when the
    file holds none, or one pretrained on objects (the affinity reads whole rooms)."""
    backbone = load_backbone(path)
    if backbone.crop is None:
        raise InputError("holds an encoder pretrained on objects; the refinement reads whole rooms: give a run "
                         "pretrained on scene crops (pptkit pretrain --crop N)", backbone.path)
    if backbone.num_points is None:
        raise InputError("does not record the encoder's points per crop", backbone.path, where="config.data.num_points")
    model = encoder_from_config(backbone.config, backbone.path)
    load_encoder_state(model, backbone)
    return AffinityEncoder(model.requires_grad_(False).eval(), backbone.crop, backbone.num_points, backbone.digest)


def stored_scenes(path: Path, with_segment: bool = True):
    """(name, voxel labels or None) of every complete scene of a store, in SceneDataset order.

    Reads only what tags need; the training path (TaggedScenes) never sees these labels.
    """
    f, _ = open_store(path)
    with f:
        for group in complete_groups(f):
            try:
                yield str(f[group].attrs["name"]), (f[group]["segment"][()] if with_segment else None)
            except (OSError, KeyError) as exc:
                raise InputError(f"cannot read scene '{group}': {exc}", path) from None


def store_label_map(store_classes, model_classes: list[str]) -> np.ndarray:
    """Store label -> model label by class name (-1 for classes the model does not learn)."""
    keys = [canonical_class_name(n) for n in model_classes]
    return np.array([keys.index(canonical_class_name(n)) if canonical_class_name(n) in keys else IGNORE_INDEX
                     for n in store_classes], dtype=np.int64)


def check_memory(opts: IncrementalOptions, recipe: IncrementalRecipe, base: BaseRun, dataset: str,
                 old_classes: list[str]) -> MemoryBank | None:
    """The copy-paste memory: the base run's own memory and/or instances cut from --memory-data."""
    if opts.memory < 0:
        raise InputError(f"must be >= 0, got {opts.memory}", "--memory")
    if opts.memory == 0:
        if opts.memory_data is not None:
            raise InputError("is given but --memory is 0: say how many instances per old class to keep",
                             "--memory-data")
        return None
    banks = [base.memory] if base.memory is not None else []
    if opts.memory_data is not None:
        store = SceneDataset(opts.memory_data)
        class_map = {int(k): int(v) for k, v in enumerate(store_label_map(store.class_names, old_classes)) if v >= 0}
        if not class_map:
            raise InputError(f"holds none of the old classes ({', '.join(old_classes)})", opts.memory_data)
        c = recipe.copy_paste
        banks.append(build_memory((store[i] for i in track(range(len(store)), "memory", total=len(store))),
                                  class_map, opts.memory, opts.seed, c.min_voxels, c.max_extent))
    if not banks:
        raise InputError("copy-paste needs old-class instances: give a labelled store of earlier steps with "
                         "--memory-data (the base run keeps no memory), or --memory 0", "--memory")
    memory = MemoryBank.concatenate(banks).per_class(opts.memory)
    if len(memory) == 0:
        raise InputError("no instance of an old class was found for the memory (instances need "
                         f"{recipe.copy_paste.min_voxels}+ voxels and at most {recipe.copy_paste.max_extent} m)",
                         opts.memory_data or "--memory")
    return memory


def _check_resume(checkpoint: dict, inputs: StepInputs, path: Path) -> None:
    """A resumed run must see the same base model, classes and training scenes."""
    saved = checkpoint.get("incremental", {}).get("inputs", {})
    if saved != step_fingerprint(inputs):
        raise InputError("the base run, --data, --new-classes, tags, memory or --encoder differ from the checkpoint's; "
                         "resume with the same inputs", path)


def step_fingerprint(inputs: StepInputs) -> dict:
    """What identifies a step's inputs (kept in every checkpoint, compared on resume)."""
    fingerprint = {"base": inputs.base.digest, "dataset": inputs.dataset, "new_classes": list(inputs.new_classes),
                   "scenes": [int(i) for i in inputs.indices], "tags": inputs.tags.astype(np.int64).tolist(),
                   "memory": [] if inputs.memory is None else list(inputs.memory.sources)}
    if inputs.encoder is not None:
        fingerprint["encoder"] = inputs.encoder.digest
    return fingerprint


# ------------------------------------------------------------------------------------ data path

class TaggedScenes(torch.utils.data.Dataset):
    """Step-t scenes as training sees them: every point label and instance id replaced by ignore
    (or, for the full-label bound, labels mapped to the model's classes), plus superpoint ids and
    encoder patch ids.

    This is the only way step-t scenes reach training, so no point label of a tagged scene does.
    """

    def __init__(self, scenes: SceneDataset, indices: list[int], label_map: np.ndarray | None,
                 superpoint_ids: list[np.ndarray] | None, patch_ids: list[np.ndarray] | None = None):
        self.scenes, self.indices, self.label_map = scenes, indices, label_map
        self.superpoint_ids, self.patch_ids = superpoint_ids, patch_ids

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> dict:
        raw = self.scenes[self.indices[j]]
        n = len(raw["coord"])
        if self.label_map is None:
            segment = np.full(n, IGNORE_INDEX, dtype=np.int16)
        else:
            stored = raw["segment"].astype(np.int64)
            segment = np.where(stored >= 0, self.label_map[np.maximum(stored, 0)], IGNORE_INDEX).astype(np.int16)
        sample = {"name": raw["name"], "coord": raw["coord"], "color": raw["color"], "normal": raw["normal"],
                  "segment": segment, "instance": np.full(n, -1, dtype=np.int32)}
        if self.superpoint_ids is not None:
            sample["superpoint"] = self.superpoint_ids[j]
        if self.patch_ids is not None:
            sample["patch"] = self.patch_ids[j]
        return sample


def scene_superpoints(scenes: SceneDataset, indices: list[int], recipe: IncrementalRecipe) -> list[np.ndarray]:
    """Superpoint ids of every stored row of the training scenes (deterministic, computed once)."""
    r = recipe.refine
    grid = r.superpoint_grid or recipe.data.grid_size
    out = []
    for i in track(indices, "superpoints", total=len(indices)):
        s = scenes[i]
        out.append(superpoints(s["coord"], s["normal"], s["color"], grid, r.superpoint_k,
                               r.superpoint_colour_weight, r.superpoint_min_size))
    return out


def scene_patches(scenes: SceneDataset, indices: list[int], encoder: AffinityEncoder, device: torch.device
                  ) -> tuple[list[np.ndarray], torch.Tensor]:
    """Each training scene's stored rows' patch ids (numbered across the scenes) and the patch
    tokens (P, C, on `device`) of the frozen encoder over the un-augmented room (computed once)."""
    model = encoder.model.to(device)
    ids, tokens, offset = [], [], 0
    for i in track(indices, "encoder features", total=len(indices)):
        coord = torch.from_numpy(np.asarray(scenes[i]["coord"], dtype=np.float32)).to(device)
        patch, table = room_patch_features(model, coord, encoder.crop, encoder.num_points)
        ids.append(patch.cpu().numpy() + offset)
        tokens.append(table)
        offset += table.shape[0]
    return ids, torch.cat(tokens)


class StepEpoch(torch.utils.data.Dataset):
    """One epoch's batches: (samples, tags) per step, each sample augmented by its own generator
    seeded by (seed, epoch, scene), so batches depend neither on worker count nor on resuming."""

    def __init__(self, scenes: TaggedScenes, tags: np.ndarray, schedule: list[tuple[int, ...]], transform,
                 seed: int, epoch: int):
        self.scenes, self.tags, self.schedule, self.transform = scenes, tags, schedule, transform
        self.seed, self.epoch = seed, epoch

    def __len__(self) -> int:
        return len(self.schedule)

    def __getitem__(self, step: int) -> tuple[list[dict], np.ndarray]:
        indices = self.schedule[step]
        samples = [self.transform(self.scenes[i], np.random.default_rng([self.seed, self.epoch, i])) for i in indices]
        return samples, self.tags[list(indices)]


def _as_built(item):
    """DataLoader collate for batches StepEpoch already assembled (module level: spawn-safe)."""
    return item


@dataclass
class StepBatch:
    """One step's scenes merged into a SparseTensor, with per-row facts the losses need."""

    input: SparseTensor
    inverse: torch.Tensor  # (rows,) voxel of each row
    target: torch.Tensor  # (rows,) label of pasted rows (full labels for the upper bound), else -1
    scene: torch.Tensor  # (rows,) scene index in the batch
    superpoint: torch.Tensor  # (rows,) superpoint id, unique across the batch
    tags: torch.Tensor  # (scenes, K) bool
    patch: torch.Tensor | None = None  # (rows,) encoder patch id (-1: pasted), with --encoder


def collate_step(samples: list[dict], tags: np.ndarray, device: torch.device) -> StepBatch:
    grid = [torch.as_tensor(np.asarray(s["grid_coord"]), dtype=torch.int32) for s in samples]
    feats = [torch.from_numpy(scene_features(s)) for s in samples]
    x, inverse = sparse_collate(grid, feats, device=device)
    target = np.concatenate([np.asarray(s["segment"], dtype=np.int64) for s in samples])
    scene = np.concatenate([np.full(len(s["coord"]), k, dtype=np.int64) for k, s in enumerate(samples)])
    superpoint, offset = [], 0
    for s in samples:
        ids = np.asarray(s.get("superpoint", np.arange(len(s["coord"]))), dtype=np.int64)
        superpoint.append(ids + offset)
        offset += int(ids.max(initial=-1)) + 1
    as_tensor = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    patch = None
    if all("patch" in s for s in samples):
        patch = as_tensor(np.concatenate([np.asarray(s["patch"], dtype=np.int64) for s in samples]))
    return StepBatch(x, inverse, as_tensor(target), as_tensor(scene), as_tensor(np.concatenate(superpoint)),
                     torch.from_numpy(np.asarray(tags, dtype=bool)).to(device), patch)


def step_transform(recipe: IncrementalRecipe, memory: MemoryBank | None):
    """Copy-paste (when there is a memory), then the training chain (or the evaluation chain)."""
    d, c = recipe.data, recipe.copy_paste
    chain = train_transforms(d.grid_size, point_max=d.point_max) if d.augment else eval_transforms(d.grid_size)
    if memory is None:
        return chain
    paste = CopyPaste(memory, d.grid_size, c.max_instances, c.p, c.scale, c.tries)
    return Compose([paste, chain])


# ---------------------------------------------------------------------------------------- model

def extend_label_space(base: BaseRun, dataset: str, new_classes: list[str]) -> tuple[UnionLabelSpace, UnionLabelSpace]:
    """(the base's label space, the same with the new classes appended to `dataset`'s classes)."""
    old = UnionLabelSpace.from_class_names(base.class_names)
    names = {d: list(n) for d, n in base.class_names.items()}
    names[dataset] = names[dataset] + list(new_classes)
    new = UnionLabelSpace.from_class_names(names)
    assert new.union_names[:len(old)] == old.union_names, "appending classes keeps the union's order"
    return old, new


def step_text_embeddings(base: BaseRun, old: UnionLabelSpace, new: UnionLabelSpace, run: RunDir) -> torch.Tensor:
    """The base's class-name embeddings plus those of union names it lacks (encoded once, kept in
    the run folder and every checkpoint)."""
    base_text = base.state["head.text_embeddings"]
    added = list(new.union_names[len(old):])
    if not added:
        return base_text
    path = run.path / "text_embeddings.pt"
    template = base.model_cfg.prompt_template
    if path.is_file():
        stored = load_checkpoint(path)
        if stored.get("names") == list(new.union_names) and stored.get("template") == template:
            return stored["embeddings"]
    embeddings = torch.cat([base_text, text_embeddings(base.model_cfg, added).to(base_text.dtype)])
    if run.writer:
        save_checkpoint(path, {"names": list(new.union_names), "template": template,
                               "encoder": base.model_cfg.text_encoder, "embeddings": embeddings})
    return embeddings


def build_student(base: BaseRun, labels: UnionLabelSpace, text: torch.Tensor) -> PointPromptModel:
    """The base model with its language-guided head widened to the new label space."""
    student = build_model(base.model_cfg, labels, base.datasets, text)
    widened = {k for k in student.state_dict() if k == "head.text_embeddings" or k.startswith("head.dataset_to_union.")}
    missing, unexpected = student.load_state_dict({k: v for k, v in base.state.items() if k not in widened},
                                                  strict=False)
    if set(missing) != widened or unexpected:
        raise InputError(f"the base checkpoint does not fit its own model config (missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]})", base.path)
    return student


def build_old_model(base: BaseRun, labels: UnionLabelSpace) -> PointPromptModel:
    model = build_model(base.model_cfg, labels, base.datasets, torch.zeros_like(base.state["head.text_embeddings"]))
    model.load_state_dict(base.state)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _optimizer(model: IncrementalModel, recipe: IncrementalRecipe, total_steps: int):
    """SGD (prompt-related parameters and the new heads at scaled rates) with the configured schedule."""
    o = recipe.optim
    prompt_params, other_params = split_prompt_parameters(model.student)
    heads = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in model.student.parameters())]
    groups = [{"params": other_params, "lr": o.lr}, {"params": heads, "lr": o.lr * o.heads_lr_scale}]
    if prompt_params:
        groups.append({"params": prompt_params, "lr": o.lr * o.prompt_lr_scale})
    optimizer = torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                                nesterov=o.nesterov)
    return optimizer, lr_schedule(optimizer, o.scheduler, total_steps, o.pct_start, o.div_factor, o.final_div_factor)


# ----------------------------------------------------------------------------------------- loss

class StepLoss:
    """The loss of one incremental step, `loss(model, batch, step) -> StepResult` for the engine."""

    def __init__(self, recipe: IncrementalRecipe, old_model: PointPromptModel, dataset_index: int, num_old: int,
                 num_new: int, seed: int, steps_per_epoch: int, patch_tokens: torch.Tensor | None = None):
        self.recipe, self.old_model, self.dataset_index = recipe, old_model, dataset_index
        self.num_old, self.num_new, self.seed, self.steps_per_epoch = num_old, num_new, seed, steps_per_epoch
        self.patch_tokens = patch_tokens  # the refinement's features by encoder patch (None: the old model's)

    def __call__(self, model: torch.nn.Module, batch: StepBatch, step: int) -> StepResult:
        if self.recipe.data.supervision == "labels":
            return self.full_labels(model, batch)
        return self.tags(model, batch, step)

    def full_labels(self, model: torch.nn.Module, batch: StepBatch) -> StepResult:
        """The upper bound: cross-entropy on the scenes' own labels of every learned class."""
        logits = model(batch.input, self.dataset_index).float()[batch.inverse]
        labelled = batch.target >= 0
        loss = F.cross_entropy(logits, batch.target, ignore_index=IGNORE_INDEX) if labelled.any() \
            else logits.sum() * 0.0
        return StepResult(loss, size=batch.input.feats.shape[0], metrics={"labelled": float(labelled.float().mean())})

    def tags(self, model: torch.nn.Module, batch: StepBatch, step: int) -> StepResult:
        """The method: activation map from tags, pseudo masks, teacher, distillation."""
        r, d, rows = self.recipe, self.dataset_index, batch.inverse
        epoch = step // self.steps_per_epoch
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, step]).generate_state(1)[0]))
        with torch.no_grad():
            old_feats = backbone_features(self.old_model, batch.input, d)
            old_prob = self.old_model.head(old_feats, d).float().softmax(dim=1)[rows]
        out = model(batch.input, d, heads=True)
        logits = out["logits"].float()[rows]
        pasted = batch.target >= 0
        allowed = batch.tags[batch.scene] & ~pasted[:, None]

        # Activation map: learned from the tags alone, pooled over each scene's own points where
        # the old model is unsure (candidates of a new class); a softmax over the point's tags.
        u = novelty(old_prob)
        cam_logits = out["cam"].float()[rows]
        own = ~pasted
        candidate = u[own] >= r.masks.novelty_threshold
        scene_logits = mil_pool(cam_logits[own], batch.scene[own], batch.tags.shape[0], r.masks.cam_top_fraction,
                                candidate)
        cam_loss = F.binary_cross_entropy_with_logits(scene_logits, batch.tags.float())
        cam_map = activation_map(cam_logits.detach(), allowed)

        teacher_loss = contrastive = logits.new_zeros(())
        if epoch >= r.masks.start_epoch:
            initial, fused = self.pseudo_masks(model, batch, old_feats, u, cam_map, allowed, generator)
            fused_onehot = F.one_hot(fused.clamp(min=0), self.num_new).float() * (fused >= 0)[:, None]
            new_prob = fused_onehot
            if r.teacher.enabled:
                teacher_logits = out["teacher_logits"].float()[rows]
                teacher_loss = balanced_bce(teacher_logits, fused_onehot, allowed)
                if r.teacher.contrastive_weight > 0:
                    classes = torch.where(fused >= 0, self.num_old + fused, old_prob.argmax(dim=1))
                    classes = torch.where(pasted, batch.target, classes)
                    contrastive = dense_contrastive_loss(out["teacher_embed"].float()[rows], classes,
                                                         r.teacher.points_per_class, r.teacher.temperature, generator)
                if epoch >= r.masks.start_epoch + r.teacher.warmup_epochs:
                    new_prob = teacher_logits.detach().sigmoid()
        else:  # the map is still learning: no new-class supervision yet
            initial = fused = torch.full_like(batch.scene, NO_CLASS)
            new_prob = logits.new_zeros(allowed.shape)
        student_loss = self.student_loss(logits, old_prob, new_prob, allowed, batch.target)
        loss = student_loss + cam_loss + teacher_loss + r.teacher.contrastive_weight * contrastive
        parts = {"student": student_loss, "cam": cam_loss, "teacher": teacher_loss, "contrastive": contrastive,
                 "fused_new": (fused >= 0).float().mean(), "initial_new": (initial >= 0).float().mean(),
                 "pasted": pasted.float().mean()}
        return StepResult(loss, size=batch.input.feats.shape[0], metrics={k: float(v.detach()) for k, v in parts.items()})

    @torch.no_grad()
    def pseudo_masks(self, model: torch.nn.Module, batch: StepBatch, old_feats: torch.Tensor, u: torch.Tensor,
                     cam_map: torch.Tensor, allowed: torch.Tensor,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(initial labels, fused labels) per row: NO_CLASS or a new class index."""
        r, d, rows = self.recipe, self.dataset_index, batch.inverse
        head = unwrap(model).student.head
        text = head.text_embeddings[head.dataset_to_union[d]][self.num_old:].float()
        embed = F.normalize(self.old_model.head.proj(old_feats).float(), dim=1)[rows]
        zero_shot = zero_shot_scores(embed, text, self.old_model.head.scale.float(), allowed)
        scores = initial_scores(u, zero_shot, cam_map, allowed, r.masks.zero_shot_weight)
        initial = initial_labels(scores, r.masks.threshold)
        own = batch.target < 0
        scene_rows = [torch.nonzero((batch.scene == s) & own).flatten() for s in range(batch.tags.shape[0])]
        for mine in scene_rows:
            initial[mine] = limit_labels(initial[mine], scores[mine], r.masks.max_fraction)
        refined = affinities = None
        if r.refine.enabled:
            refined, affinities = torch.zeros_like(allowed), torch.zeros_like(scores)
            feats = old_feats.float()[rows] if self.patch_tokens is None else \
                self.patch_tokens[batch.patch.clamp(min=0)]
            for s, mine in enumerate(scene_rows):
                superpoint = batch.superpoint[mine] if r.refine.superpoints else None
                refined[mine], affinities[mine] = refine_masks(
                    scores[mine], batch.tags[s], feats[mine], superpoint, r.refine.seeds, r.refine.seed_candidates,
                    r.refine.threshold, generator, r.masks.max_fraction)
        fused = fuse_masks(initial, scores, refined, affinities)
        fused[batch.target >= 0] = NO_CLASS
        return initial, fused

    def student_loss(self, logits: torch.Tensor, old_prob: torch.Tensor, new_prob: torch.Tensor, allowed: torch.Tensor,
                     target: torch.Tensor) -> torch.Tensor:
        """Old classes from the old model, new ones from `new_prob` (teacher or fused masks); pasted
        rows (`target` >= 0) keep their real labels. Without distillation: hard labels only."""
        r, pasted = self.recipe, target >= 0
        if r.distill.enabled:
            soft = distillation_targets(old_prob, new_prob, allowed, r.distill.alpha, r.distill.beta)
            soft[pasted] = F.one_hot(target[pasted], self.num_old + self.num_new).float()
            return soft_cross_entropy(logits, soft).mean()
        best, label = (new_prob * allowed).max(dim=1)
        hard = torch.where(best >= 0.5, self.num_old + label, torch.full_like(label, IGNORE_INDEX))
        hard = torch.where(pasted, target, hard)
        if not (hard >= 0).any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits, hard, ignore_index=IGNORE_INDEX)


# ----------------------------------------------------------------------------------------- stage

def run_incremental(opts: IncrementalOptions) -> IncrementalRecipe | Path:
    if opts.write_base_store is not None:
        _, path = parse_store(opts.data, "--data")
        written = write_base_store(path, opts.write_base_store, parse_class_list(opts.new_classes))
        console.print(f"base store without {opts.new_classes}: {written}")
        return written
    if opts.out is None:
        raise InputError("give the run folder with --out", "--out")
    setup = open_run(opts.out, opts.resume, opts.recipe, IncrementalRecipe, opts.overrides, opts.device)
    inputs = check_step_inputs(opts, setup.recipe, setup.dist.world_size)
    if setup.checkpoint is not None:
        _check_resume(setup.checkpoint, inputs, setup.run.last)
    setup.run.start(to_toml(setup.recipe), resume_step=None if setup.checkpoint is None else setup.checkpoint["step"])
    try:
        return _train(opts, setup, inputs)
    finally:
        setup.run.close()
        cleanup()


def _train(opts: IncrementalOptions, setup: RunSetup[IncrementalRecipe], inputs: StepInputs) -> IncrementalRecipe:
    device, dist, run, recipe, checkpoint = setup.device, setup.dist, setup.run, setup.recipe, setup.checkpoint
    base, dataset = inputs.base, inputs.dataset
    old_labels, labels = extend_label_space(base, dataset, inputs.new_classes)
    class_names = {d: list(n) for d, n in labels.class_names.items()}
    if opts.verbose and dist.is_main:
        console.print(labels.describe())
    kept = inputs.memory if inputs.memory is not None else base.memory  # carried on for the next step
    if kept is not None and run.writer:
        save_memory(run.path / "memory.pt", kept, inputs.old_classes)
    text = step_text_embeddings(base, old_labels, labels, run)
    console.print(f"step {len(base.steps.get(dataset, [])) + 1} on '{dataset}': {len(inputs.old_classes)} old + "
                  f"{len(inputs.new_classes)} new classes ({', '.join(inputs.new_classes)}), "
                  f"{len(inputs.indices)} tagged scenes, "
                  f"{0 if inputs.memory is None else len(inputs.memory)} memory instances"
                  + (f", affinity from the encoder of {opts.encoder}" if inputs.encoder is not None else ""))

    torch.manual_seed(opts.seed)
    student = build_student(base, labels, text)
    cam = ClassActivationHead(student.backbone.out_channels, len(inputs.new_classes))
    teacher = None
    if recipe.teacher.enabled:
        t = recipe.teacher
        teacher = PlugInTeacherHead(student.backbone.out_channels, len(inputs.new_classes), t.hidden_channels,
                                    t.embed_channels)
    model = IncrementalModel(student, cam, teacher).to(device)
    old_model = build_old_model(base, old_labels).to(device)
    if dist.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)

    needs_superpoints = recipe.data.supervision == "tags" and recipe.refine.enabled and recipe.refine.superpoints
    superpoint_ids = scene_superpoints(inputs.scenes, inputs.indices, recipe) if needs_superpoints else None
    patch_ids = patch_tokens = None
    if inputs.encoder is not None:
        patch_ids, patch_tokens = scene_patches(inputs.scenes, inputs.indices, inputs.encoder, device)
    scenes = TaggedScenes(inputs.scenes, inputs.indices, inputs.label_map, superpoint_ids, patch_ids)
    transform = step_transform(recipe, inputs.memory)

    def schedule_for(epoch: int) -> list[tuple[int, ...]]:
        batches = epoch_schedule([len(scenes)], [1], recipe.data.batch_size, opts.seed, epoch, dist.rank,
                                 dist.world_size)
        return [b.indices for b in batches]

    steps_per_epoch = len(schedule_for(0))
    optimizer, scheduler = _optimizer(unwrap(model), recipe, steps_per_epoch * recipe.train.epochs)
    state = TrainState()
    if checkpoint is not None:
        state = restore(checkpoint, model, optimizer, scheduler, device)
        console.print(f"resuming {run.last} at epoch {state.epoch}, step {state.step}")

    def batches_for_epoch(epoch: int):
        epoch_data = StepEpoch(scenes, inputs.tags, schedule_for(epoch), transform, opts.seed, epoch)
        loader = torch.utils.data.DataLoader(epoch_data, batch_size=None, shuffle=False,
                                             num_workers=recipe.data.num_workers, collate_fn=_as_built)
        for samples, tags in loader:
            yield collate_step(samples, tags, device)

    loss_fn = StepLoss(recipe, old_model, base.datasets.index(dataset), len(inputs.old_classes),
                       len(inputs.new_classes), opts.seed, steps_per_epoch, patch_tokens)
    steps = {k: [list(s) for s in v] for k, v in base.steps.items()}
    steps[dataset] = steps.get(dataset, []) + [list(inputs.new_classes)]
    base_classes = dict(base.base_classes)
    base_classes.setdefault(dataset, list(inputs.old_classes))
    extra = {"config": to_dict(recipe), "datasets": base.datasets, "class_names": class_names,
             "union_names": list(labels.union_names), "seed": opts.seed,
             "incremental": {"model": to_dict(base.model_cfg), "dataset": dataset, "base_classes": base_classes,
                             "steps": steps, "base_run": str(base.path), "inputs": step_fingerprint(inputs)}}
    loop = LoopConfig(recipe.train.epochs, recipe.train.clip_grad, recipe.train.amp, recipe.train.log_every,
                      monitor="miou", unit="vox")
    state = train(model, optimizer, scheduler, loss_fn, batches_for_epoch, steps_per_epoch, None, run, loop,
                  state, device, dist, extra)
    check_ranks_agree(model, state, run, dist)
    if dist.is_main:
        console.print(f"done: {state.epoch} epochs, {state.step} steps; checkpoints in {run.path}")
    return recipe
