"""Weakly incremental segmentation (FMWISS carried to points) on synthetic ScanNet-style rooms.

Protocol (15-5 in the 3D class-incremental style): five of the ScanNet classes are new, kept in
label order (cabinet, chair, bookshelf, desk, curtain). Not the label order's last five, as
ScanNet 15-5 takes: in the synthetic ScanNet-style rooms those (shower curtain, toilet, sink,
bathtub, otherfurniture) are in at most a few rooms, or none (shower curtain), so no method, not
even the full-label upper bound, could learn them; the five here are in half or more of the
rooms. Three disjoint pools of rooms (synthesis seeds 1000+, 2000+, 3000+ per benchmark seed):

- base rooms: a step-0 store without the new classes (`pptkit incremental --write-base-store`),
  on which `pptkit joint-train` trains the base model (recipes/incr-base-tiny.toml);
- step rooms: the new data, used only through their tags (`--tags-from-labels`, overlap setting);
- test rooms: scored by `pptkit eval` on every original point (base / novel / all mIoU).

Schedules: 15-5 in one step, and 15-3-2 in two steps (cabinet, chair, bookshelf; then desk,
curtain). Methods, every one through `pptkit incremental` with the same
recipe (recipes/incr-tiny.toml) and schedule:

- fine-tuning on initial masks (lower bound): refinement, teacher, distillation, copy-paste off;
- the full method (FMWISS: initial masks, seed-guided refinement, plug-in teacher with the
  contrastive loss, distillation, memory copy-paste with --memory B from the base rooms);
- joint upper bound: the step rooms' full labels (data.supervision = "labels");
- the full method with the refinement's affinity from a frozen Point-MAE encoder (`pptkit pretrain
  --stage mae --crop`, recipes/act-tiny.toml, on the base rooms) instead of the base model's features;
- ablations (1-step schedule): the full method without one component.

It also scores the pseudo masks themselves on the step rooms (ground truth used only here): the
points the old model is unsure of (where), the zero-shot map and the activation map (each alone
deciding which tagged class), the initial, refined and fused masks and the teacher, from the
full method's final 1-step model, to show what each part contributes.

Run (the scale is in the flags; the README has the latest run's time):
  python benchmarks/incremental.py [--work benchmarks/.work/incremental] [--seeds 0 1 2] [--jobs 2]
Writes benchmarks/results/incremental.md and incremental.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BASE_RECIPE = ROOT / "recipes" / "incr-base-tiny.toml"
STEP_RECIPE = ROOT / "recipes" / "incr-tiny.toml"
NEW = ["cabinet", "chair", "bookshelf", "desk", "curtain"]
SCHEDULES = {"15-5": [NEW], "15-3-2": [NEW[:3], NEW[3:]]}

ENCODER_RECIPE = ROOT / "recipes" / "act-tiny.toml"
ENCODER_CROP = 1024  # points per pretraining crop of a base room (about 10 m2 of surface at 10 cm)


@dataclass(frozen=True)
class Method:
    label: str
    overrides: tuple[str, ...] = ()
    memory: bool = True  # copy-paste from --memory B instances of the base rooms
    encoder: bool = False  # refinement affinity from the Point-MAE encoder (--encoder)


METHODS: dict[str, Method] = {
    "finetune": Method("fine-tuning on initial masks (lower bound)",
                       ("refine.enabled=false", "teacher.enabled=false", "distill.enabled=false"), memory=False),
    "full": Method("full method"),
    "joint": Method("joint, full labels (upper bound)", ('data.supervision="labels"',), memory=False),
    "encoder": Method("full, affinity from a Point-MAE encoder (--encoder)", encoder=True),
    "no-refine": Method("- seed-guided refinement", ("refine.enabled=false",)),
    "no-teacher": Method("- plug-in teacher head", ("teacher.enabled=false",)),
    "no-contrastive": Method("- dense contrastive loss", ("teacher.contrastive_weight=0",)),
    "no-copy-paste": Method("- memory copy-paste", memory=False),
    "no-distill": Method("- distillation", ("distill.enabled=false",)),
}
TWO_STEP_METHODS = ("finetune", "full", "joint")


@dataclass(frozen=True)
class Scale:
    base_rooms: int
    step_rooms: int
    test_rooms: int
    grid: float
    base_epochs: int
    step_epochs: int
    step_lr: float
    memory: int
    encoder_epochs: int  # Point-MAE epochs on the base rooms (one crop per room per epoch)

    def base_overrides(self) -> list[str]:
        return [f"data.grid_size={self.grid}", f"train.epochs={self.base_epochs}",
                "train.log_every=50", "train.eval_every=1000", "train.amp=false"]

    def step_overrides(self) -> list[str]:
        return [f"data.grid_size={self.grid}", f"train.epochs={self.step_epochs}", f"optim.lr={self.step_lr}",
                "train.log_every=50", "train.amp=false"]


def pool(work: Path, name: str, rooms: int, seed: int, grid: float) -> Path:
    """A preprocessed store of `rooms` synthetic ScanNet-style rooms (synthesis seed `seed`)."""
    from pptkit.stages.preprocess import PreprocessOptions, run_preprocess
    from pptkit.stages.synth import run_synth

    out = work / "data" / f"{name}.h5"
    if out.is_file():
        return out
    raw = run_synth(style="scannet", out=work / "raw" / name, scenes=rooms, seed=seed, overwrite=True)
    part = {}
    for split in ("train", "val"):
        part[split] = run_preprocess(PreprocessOptions(dataset="scannet", input=raw, split=split,
                                                       output=work / "data" / f"{name}_{split}.h5", grid_size=grid))
    merge_stores([part["train"], part["val"]], out)
    return out


def merge_stores(parts: list[Path], out: Path) -> None:
    """One store holding the scenes of several stores of the same dataset and settings."""
    import h5py

    from pptkit.data.store import complete_groups, open_store, write_meta

    f0, meta = open_store(parts[0])
    f0.close()
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(tmp, "w") as dst:
        write_meta(dst, meta)
        for part in parts:
            f, _ = open_store(part)
            with f:
                for group in complete_groups(f):
                    f.copy(f[group], dst, name=group)
    os.replace(tmp, out)


def seed_text_cache(source: Path, target: Path) -> None:
    """Reuse an earlier run's class-name embeddings (the run folder's own cache) when they fit."""
    cache = source / "text_embeddings.pt"
    if cache.is_file() and not (target / "text_embeddings.pt").exists():
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(cache, target / "text_embeddings.pt")


def evaluate(run: Path, test: Path) -> dict:
    from pptkit.stages.evaluate import EvalOptions, run_eval

    out = run / "eval" / "results.json"
    run_eval(EvalOptions(checkpoint=run, data=[f"scannet={test}"], out=out, device="cpu"))
    document = json.loads(out.read_text())["scannet"]
    groups = document.get("groups") or {"base": document["miou"], "novel": None, "all": document["miou"]}
    return {"base": groups["base"], "novel": groups["novel"], "all": groups["all"],
            "per_class": {k: v["iou"] for k, v in document["per_class"].items()}}


@dataclass(frozen=True)
class SeedData:
    root: Path
    base_store: Path  # the base rooms without the new classes
    base: Path  # the base model's run folder
    step_pool: Path
    test_pool: Path
    test_base: Path  # the test rooms in the base model's 15 classes
    encoder: Path  # Point-MAE (act-tiny) pretrained on crops of the base rooms


def prepare_seed(seed: int, work: Path, scale: Scale) -> SeedData:
    """The seed's three pools of rooms, its step-0 store and its base model (reused when present)."""
    from pptkit.stages.incremental import IncrementalOptions, run_incremental
    from pptkit.stages.joint_train import JointTrainOptions, run_joint_train
    from pptkit.stages.pretrain import PretrainOptions, run_pretrain

    root = work / f"seed{seed}"
    base_pool = pool(work, f"base{seed}", scale.base_rooms, 1000 + seed, scale.grid)
    step_pool = pool(work, f"step{seed}", scale.step_rooms, 2000 + seed, scale.grid)
    test_pool = pool(work, f"test{seed}", scale.test_rooms, 3000 + seed, scale.grid)
    base_store = root / "base_store.h5"
    if not base_store.is_file():
        run_incremental(IncrementalOptions(new_classes=",".join(NEW), data=str(base_pool),
                                           write_base_store=base_store))
    base = root / "base"
    if not (base / "last.pt").is_file():
        shutil.rmtree(base, ignore_errors=True)
        run_joint_train(JointTrainOptions(recipe=BASE_RECIPE, data=[f"scannet={base_store}"], out=base,
                                          device="cpu", seed=seed, overrides=scale.base_overrides()))
    test_base = root / "test_base.h5"
    if not test_base.is_file():
        run_incremental(IncrementalOptions(new_classes=",".join(NEW), data=str(test_pool), write_base_store=test_base))
    encoder = root / "encoder"
    if not (encoder / "last.pt").is_file():
        shutil.rmtree(encoder, ignore_errors=True)
        run_pretrain(PretrainOptions(recipe=ENCODER_RECIPE, data=[base_store], out=encoder, stage="mae",
                                     crop=ENCODER_CROP, device="cpu", seed=seed,
                                     overrides=[f"train.epochs={scale.encoder_epochs}", "train.log_every=50",
                                                f"mae.batch_size={min(8, scale.base_rooms)}"]))
    return SeedData(root, base_store, base, step_pool, test_pool, test_base, encoder)


def run_seed(seed: int, work: Path, scale: Scale) -> dict:
    """Base model, every method and schedule, and the pseudo-mask diagnosis for one seed."""
    import torch

    torch.set_num_threads(1)
    from pptkit.progress import set_quiet
    from pptkit.stages.incremental import IncrementalOptions, run_incremental

    set_quiet(True)
    started = time.perf_counter()
    data = prepare_seed(seed, work, scale)
    root, base, step_pool, test_pool, base_store = data.root, data.base, data.step_pool, data.test_pool, data.base_store
    result: dict = {"seed": seed, "base_model": evaluate(base, data.test_base), "runs": {}}
    for schedule, steps in SCHEDULES.items():
        methods = METHODS if schedule == "15-5" else {k: METHODS[k] for k in TWO_STEP_METHODS}
        for key, method in methods.items():
            previous = base
            for t, classes in enumerate(steps, 1):
                run = root / schedule / key / f"step{t}"
                if not (run / "last.pt").is_file():
                    shutil.rmtree(run, ignore_errors=True)
                    seed_text_cache(root / schedule / next(iter(methods)) / f"step{t}", run)
                    memory_data = base_store if method.memory and t == 1 else None
                    run_incremental(IncrementalOptions(
                        new_classes=",".join(classes), data=str(step_pool), out=run, recipe=STEP_RECIPE,
                        base=previous, tags_from_labels=True, memory=scale.memory if method.memory else 0,
                        memory_data=memory_data, encoder=data.encoder if method.encoder else None, seed=seed,
                        device="cpu", overrides=[*scale.step_overrides(), *method.overrides]))
                previous = run
            result["runs"][f"{schedule}/{key}"] = evaluate(previous, test_pool)
    result["masks"] = diagnose_masks(root / "15-5" / "full" / "step1", base, step_pool, NEW, scale.grid, seed)
    result["seconds"] = time.perf_counter() - started
    return result


def new_class_truth(segment: np.ndarray, new_labels: list[int]) -> np.ndarray:
    """(N,) int16: each point's index among the new classes (store labels `new_labels`), -1 if old."""
    truth = np.full(len(segment), -1, dtype=np.int16)
    for k, c in enumerate(new_labels):
        truth[segment == c] = k
    return truth


def diagnose_masks(run: Path, base: Path, store: Path, new: list[str], grid: float, seed: int) -> dict[str, float]:
    """IoU (%) of each pseudo-mask stage with the step rooms' ground truth, averaged over the new
    classes present, from a trained step's activation and teacher heads (no augmentation)."""
    import torch
    import torch.nn.functional as F

    from pptkit.config import from_dict
    from pptkit.data.dataset import SceneDataset
    from pptkit.data.superpoints import superpoints
    from pptkit.data.transforms import eval_transforms
    from pptkit.engine.checkpoint import load_checkpoint
    from pptkit.models.incremental import ClassActivationHead, PlugInTeacherHead, backbone_features
    from pptkit.models.pseudo_masks import (activation_map, fuse_masks, initial_labels, initial_scores,
                                            limit_labels, novelty, refine_masks, zero_shot_scores)
    from pptkit.stages.incr_recipe import IncrementalRecipe
    from pptkit.stages.incremental import (build_old_model, build_student, collate_step, extend_label_space,
                                           load_base_run)

    ckpt = load_checkpoint(run / "last.pt")
    recipe = from_dict(IncrementalRecipe, ckpt["config"], str(run))
    info = load_base_run(base)
    old_labels, labels = extend_label_space(info, "scannet", new)
    old = build_old_model(info, old_labels)
    state = ckpt["model"]
    student = build_student(info, labels, state["student.head.text_embeddings"])
    student.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    student.eval()
    num_old, num_new = len(info.class_names["scannet"]), len(new)
    cam = ClassActivationHead(student.backbone.out_channels, num_new)
    cam.load_state_dict({k[len("cam."):]: v for k, v in state.items() if k.startswith("cam.")})
    teacher = None
    if recipe.teacher.enabled:
        t = recipe.teacher
        teacher = PlugInTeacherHead(student.backbone.out_channels, num_new, t.hidden_channels, t.embed_channels)
        teacher.load_state_dict({k[len("teacher."):]: v for k, v in state.items() if k.startswith("teacher.")})
        teacher.eval()
    text = student.head.text_embeddings[student.head.dataset_to_union[0]][num_old:]
    scenes = SceneDataset(store)
    new_labels = [list(scenes.class_names).index(c) for c in new]
    stages = ["zero-shot map", "activation map", "initial masks", "refined masks", "fused masks"]
    counts = {k: np.zeros((num_new, 2)) for k in stages + (["teacher"] if teacher is not None else [])}
    uncertain = np.zeros(2)  # where: u(x) >= masks.novelty_threshold against "any new class"
    generator = torch.Generator().manual_seed(seed)
    r = recipe.refine
    for i in range(len(scenes)):
        raw = scenes[i]
        truth = new_class_truth(raw["segment"], new_labels)
        tags = np.array([(truth == k).any() for k in range(num_new)])
        if not tags.any():
            continue
        sp = superpoints(raw["coord"], raw["normal"], raw["color"], r.superpoint_grid or grid, r.superpoint_k,
                         r.superpoint_colour_weight, r.superpoint_min_size)
        sample = eval_transforms(grid)({**raw, "segment": truth, "superpoint": sp},
                                       np.random.default_rng(0))
        batch = collate_step([sample], tags[None], torch.device("cpu"))
        gt = batch.target.numpy()
        with torch.no_grad():
            old_feats = backbone_features(old, batch.input, 0)
            old_prob = old.head(old_feats, 0).softmax(dim=1)[batch.inverse]
            embed = F.normalize(old.head.proj(old_feats), dim=1)[batch.inverse]
            allowed = batch.tags[batch.scene]
            feats = backbone_features(student, batch.input, 0)
            u = novelty(old_prob)
            zero_shot = zero_shot_scores(embed, text, old.head.scale, allowed)
            cam_map = activation_map(cam(feats)[batch.inverse], allowed)
            scores = initial_scores(u, zero_shot, cam_map, allowed, recipe.masks.zero_shot_weight)
            initial = limit_labels(initial_labels(scores, recipe.masks.threshold), scores, recipe.masks.max_fraction)
            refined, affinity = refine_masks(scores, batch.tags[0], old_feats[batch.inverse], batch.superpoint,
                                             r.seeds, r.seed_candidates, r.threshold, generator,
                                             recipe.masks.max_fraction)
            predictions = {
                "zero-shot map": initial_labels(initial_scores(u, zero_shot, cam_map, allowed, 1.0),
                                                recipe.masks.threshold),
                "activation map": initial_labels(initial_scores(u, zero_shot, cam_map, allowed, 0.0),
                                                 recipe.masks.threshold),
                "initial masks": initial,
                "refined masks": fuse_masks(torch.full_like(initial, -1), scores, refined, affinity),
                "fused masks": fuse_masks(initial, scores, refined, affinity),
            }
            if teacher is not None:
                predictions["teacher"] = initial_labels(teacher(feats)[0][batch.inverse].sigmoid() * allowed, 0.5)
            where = (u >= recipe.masks.novelty_threshold).numpy()
        uncertain += [(where & (gt >= 0)).sum(), (where | (gt >= 0)).sum()]
        for key, pred in predictions.items():
            pred = pred.numpy()
            for k in range(num_new):
                counts[key][k] += [((pred == k) & (gt == k)).sum(), ((pred == k) | (gt == k)).sum()]
    scores = {key: float(100 * np.mean([i / u for i, u in c if u > 0])) for key, c in counts.items()}
    return {"uncertain points (any new class)": float(100 * uncertain[0] / uncertain[1]), **scores}


def mean_std(values: list[float | None]) -> str:
    values = [100 * v for v in values if v is not None]
    if not values:
        return "-"
    return f"{np.mean(values):.1f} ± {np.std(values):.1f}"


def report(results: list[dict], scale: Scale, minutes: float) -> str:
    seeds = [r["seed"] for r in results]
    lines = [
        "# Weakly incremental segmentation on synthetic rooms (`benchmarks/incremental.py`)", "",
        f"ScanNet-style synthetic rooms, 15-5 split (new: {', '.join(NEW)}), overlap setting, tags from "
        f"labels. Per seed: {scale.base_rooms} base rooms, {scale.step_rooms} step rooms (tags only), "
        f"{scale.test_rooms} test rooms (every original point); {scale.grid * 100:g} cm voxels; base "
        f"{scale.base_epochs} epochs, each step {scale.step_epochs} epochs at lr {scale.step_lr:g}; memory "
        f"{scale.memory} instances per old class; the recipes' model; the --encoder row's Point-MAE (act-tiny) "
        f"pretrained {scale.encoder_epochs} epochs on {ENCODER_CROP}-point crops of the base rooms. "
        f"mIoU %, mean ± std over seeds {seeds}; "
        f"{minutes:.1f} min on {platform.machine()} ({os.cpu_count()} cores).", "",
        f"Base model alone (15 classes): base mIoU {mean_std([r['base_model']['base'] for r in results])}, scored "
        "with the new classes' points left out (it cannot name them); the table below scores them too, so a point of "
        "a new class predicted as an old class counts against that old class.", "",
        "| schedule | method | base | novel | all |", "|---|---|---:|---:|---:|",
    ]
    for schedule in SCHEDULES:
        keys = METHODS if schedule == "15-5" else TWO_STEP_METHODS
        for key in keys:
            runs = [r["runs"][f"{schedule}/{key}"] for r in results]
            lines.append(f"| {schedule} | {METHODS[key].label} | {mean_std([x['base'] for x in runs])} | "
                         f"{mean_std([x['novel'] for x in runs])} | {mean_std([x['all'] for x in runs])} |")
    lines += ["", "Per new class IoU % (15-5), mean over seeds:", "",
              "| method | " + " | ".join(NEW) + " |", "|---|" + "---:|" * len(NEW)]
    for key in METHODS:
        cells = []
        for c in NEW:
            values = [r["runs"][f"15-5/{key}"]["per_class"].get(c) for r in results]
            cells.append(mean_std(values))
        lines.append(f"| {METHODS[key].label} | " + " | ".join(cells) + " |")
    lines += ["", "Pseudo-mask quality on the step rooms (IoU % with their ground truth, mean over the new "
              "classes present; the full method's final 15-5 model). First row: where, the points the old model "
              "is unsure of (u >= masks.novelty_threshold) against the points of any new class:", "",
              "| stage | IoU |", "|---|---:|"]
    for key in results[0]["masks"]:
        values = [r["masks"][key] for r in results]
        lines.append(f"| {key} | {np.mean(values):.1f} ± {np.std(values):.1f} |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, table: str, results: list[dict]) -> None:
    """`out` (the Markdown table) and its .json twin (the raw numbers), each replaced atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, content in ((out, table), (out.with_suffix(".json"), json.dumps(results, indent=2))):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(content)
        os.replace(tmp, path)


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    """--work, --seeds and the benchmark's scale (shared with incremental_probe.py)."""
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / ".work" / "incremental")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--base-rooms", type=int, default=16)
    parser.add_argument("--step-rooms", type=int, default=16)
    parser.add_argument("--test-rooms", type=int, default=12)
    parser.add_argument("--grid", type=float, default=0.1, help="voxel size (m) of the stores and training")
    parser.add_argument("--base-epochs", type=int, default=40)
    parser.add_argument("--step-epochs", type=int, default=15)
    parser.add_argument("--step-lr", type=float, default=0.05, help="peak learning rate of every step")
    parser.add_argument("--memory", type=int, default=4, help="--memory B: instances per old class")
    parser.add_argument("--encoder-epochs", type=int, default=150,
                        help="Point-MAE epochs on the base rooms (one crop of each per epoch, batches of 8)")


def scale_from(args: argparse.Namespace) -> Scale:
    return Scale(args.base_rooms, args.step_rooms, args.test_rooms, args.grid, args.base_epochs,
                 args.step_epochs, args.step_lr, args.memory, args.encoder_epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_scale_arguments(parser)
    parser.add_argument("--jobs", type=int, default=2, help="seeds run in parallel processes")
    parser.add_argument("--out", type=Path, default=RESULTS / "incremental.md")
    args = parser.parse_args()
    scale = scale_from(args)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool_:
            results = list(pool_.map(run_seed, args.seeds, [args.work] * len(args.seeds), [scale] * len(args.seeds)))
    else:
        results = [run_seed(s, args.work, scale) for s in args.seeds]
    minutes = (time.perf_counter() - started) / 60
    text = report(results, scale, minutes)
    print(text)
    write_results(args.out, text, results)


if __name__ == "__main__":
    main()
