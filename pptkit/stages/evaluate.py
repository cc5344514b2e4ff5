"""`pptkit eval`: per-dataset mIoU / mAcc / OA on every original point, tables, plots, PLYs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from pptkit.config import from_dict
from pptkit.data.dataset import SceneDataset
from pptkit.engine.checkpoint import find_checkpoint, load_checkpoint
from pptkit.engine.distributed import DistInfo, resolve_device
from pptkit.engine.inference import evaluate_dataset
from pptkit.errors import InputError
from pptkit.eval.metrics import ClassificationScores, SegmentationScores
from pptkit.eval.report import per_class_table, plot_confusion, results_table, write_results_json
from pptkit.eval.voting import tta_views
from pptkit.fileio import check_output
from pptkit.models.label_space import UnionLabelSpace
from pptkit.stages.evaluate_objects import is_object_task, run_object_eval
from pptkit.stages.incremental_eval import is_incremental_run, run_incremental_eval
from pptkit.stages.joint_train import parse_named_paths
from pptkit.stages.ppt_model import build_model
from pptkit.stages.ppt_recipe import PPTRecipe
from pptkit.progress import stdout


@dataclass
class EvalOptions:
    checkpoint: Path  # a run folder (best.pt, else last.pt) or a .pt file
    data: list[str] = field(default_factory=list)  # NAME=PATH.h5
    out: Path | None = None  # results.json; default RUN_DIR/eval/results.json
    tta: bool = False  # also on when the recipe's eval.tta is
    export_ply: Path | None = None
    device: str = "auto"
    seed: int = 0
    verbose: bool = False
    task: Path | None = None  # an object task file; --checkpoint is then its backbone
    votes: int = 0  # object tasks: augmented views averaged per object (0 = none)
    export: Path | None = None  # object tasks: the predictions as CSV


def load_trained_model(path: Path, ckpt: dict, device: torch.device):
    """Rebuild a joint-train model from its checkpoint `ckpt` (read from `path`) alone: no text
    model needed."""
    try:
        recipe = from_dict(PPTRecipe, ckpt["config"], str(path))
        names, class_names = list(ckpt["datasets"]), ckpt["class_names"]
        state = ckpt["model"]
    except KeyError as exc:
        raise InputError(f"not a joint-train checkpoint (missing {exc})", path)
    labels = UnionLabelSpace.from_class_names(class_names)
    if list(labels.union_names) != list(ckpt["union_names"]):
        raise InputError("union label space in the checkpoint does not match its class names", path)
    text = None
    if recipe.model.head == "language":
        text = torch.zeros_like(state["head.text_embeddings"])  # real values come with the state dict
    model = build_model(recipe.model, labels, names, text)
    model.load_state_dict(state)
    return model.to(device).eval(), recipe, names, class_names, path


def _refuse_point_transformer_checkpoints(path: Path, ckpt: dict) -> None:
    """A finetune or pretrain .pt file is not a scene model: say what to pass instead."""
    stage = ckpt.get("stage")
    if stage == "finetune":
        raise InputError("is a finetune checkpoint: evaluate its run folder or its task.safetensors", path)
    if stage in ("autoencoder", "distill", "mae"):
        raise InputError("is a pretraining checkpoint: fine-tune it (pptkit finetune), or pass it as the "
                         "backbone of a task file with --task", path)


def run_eval(opts: EvalOptions) -> dict[str, SegmentationScores] | dict[str, ClassificationScores]:
    if opts.task is not None or is_object_task(opts.checkpoint):
        return run_object_eval(opts)
    if opts.votes or opts.export is not None:
        raise InputError("is for object tasks (a finetune run folder or task file)",
                         "--votes" if opts.votes else "--export")
    ckpt_path = find_checkpoint(opts.checkpoint)
    ckpt = load_checkpoint(ckpt_path)  # read once: its kind decides the report, then it builds the model
    _refuse_point_transformer_checkpoints(ckpt_path, ckpt)
    if is_incremental_run(ckpt):
        return run_incremental_eval(opts, ckpt_path, ckpt)
    torch.manual_seed(opts.seed)
    device = resolve_device(opts.device)
    model, recipe, names, class_names, ckpt_path = load_trained_model(ckpt_path, ckpt, device)
    data = parse_named_paths(opts.data, "--data")
    if not data:
        raise InputError("give at least one dataset as --data NAME=PATH.h5", "--data")
    datasets = open_eval_datasets(data, names, class_names)
    out = opts.out or ckpt_path.parent / "eval" / "results.json"
    _check_outputs(out, opts.export_ply)
    out.parent.mkdir(parents=True, exist_ok=True)
    e = recipe.eval
    views = tta_views(tuple(360.0 * k / e.tta_rotations for k in range(e.tta_rotations)),
                      e.tta_scales, e.tta_flip) if opts.tta or e.tta else ()
    results: dict[str, SegmentationScores] = {}
    for name, scenes in datasets.items():
        export_dir = None
        if opts.export_ply is not None:
            export_dir = opts.export_ply / name
            export_dir.mkdir(parents=True, exist_ok=True)
        scores, matrix = evaluate_dataset(model, scenes, names.index(name), class_names[name],
                                          recipe.data.grid_size, device, DistInfo(0, 1, 0), views,
                                          export_dir, description=f"eval {name}")
        results[name] = scores
        plot_confusion(matrix, class_names[name], out.parent / f"confusion_{name}.png",
                       title=f"{name} (mIoU {100 * scores.miou:.1f})")
    write_results_json(out, results)
    stdout.print(results_table(results))
    stdout.print(per_class_table(results))
    stdout.print(f"results: {out}")
    return results


def open_eval_datasets(data: dict[str, Path], names: list[str],
                       class_names: dict[str, list[str]]) -> dict[str, SceneDataset]:
    """Every `--data` store opened and checked against the model before anything is written:
    a dataset the model knows, a readable scene store, the classes it was trained with."""
    datasets = {}
    for name, path in data.items():
        if name not in names:
            raise InputError(f"the model was not trained on '{name}' (it knows "
                             f"{', '.join(names)})", "--data")
        scenes = SceneDataset(path, with_points=True)
        if list(scenes.class_names) != list(class_names[name]):
            raise InputError(f"class names differ from those the model was trained with for "
                             f"'{name}' (store: {len(scenes.class_names)} classes, model: "
                             f"{len(class_names[name])})", path)
        if len(scenes) == 0:
            raise InputError("holds no complete scene to evaluate", path)
        datasets[name] = scenes
    return datasets


def _check_outputs(out: Path, export_ply: Path | None) -> None:
    """InputError before any work when an output path cannot be written."""
    if out.is_dir():
        raise InputError("is a folder; --out names the results.json file to write", out)
    check_output(out, overwrite=True)
    if export_ply is not None:
        if export_ply.exists() and not export_ply.is_dir():
            raise InputError("is a file; --export-ply names a folder", export_ply)
        check_output(export_ply, overwrite=True)
