"""`pptkit eval` of an object task (a `pptkit finetune` task file over its backbone).

Which files: `--checkpoint RUN_DIR` (a finetune run folder: its task.safetensors, over the
backbone the task records) or `--checkpoint TASK.safetensors`; or `--checkpoint BACKBONE
--task TASK.safetensors`, one backbone for many tasks. A backbone whose content hash differs
from the task's is refused (exit 2).

What comes out, per `--data NAME=PATH.h5`: OA, mAcc and per-class accuracy (tables and
results.json), a confusion-matrix PNG, and with `--export CSV` one row per object. Without
`--votes` each object is its farthest `num_points` points; with `--votes N` the logits of N
augmented views are averaged (the reference's voting: a random subset of the FPS pool, then
scale-and-translate; view v of object i draws from default_rng([seed, v, i])).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np
import torch

from pptkit.config import from_dict
from pptkit.engine.distributed import resolve_device
from pptkit.engine.object_batches import PointSource, ordered_batches
from pptkit.errors import InputError
from pptkit.eval.classification import ObjectPredictions, vote, write_predictions_csv
from pptkit.eval.metrics import ClassificationScores
from pptkit.eval.report import per_class_table, plot_confusion, results_table, write_results_json
from pptkit.fileio import check_output
from pptkit.stages.finetune import (
    TASK_FILE,
    collect_logits,
    load_backbone,
    load_task_model,
    object_sources,
    read_task_file,
    vote_transform,
)
from pptkit.stages.gst_recipe import FinetuneRecipe
from pptkit.stages.joint_train import parse_named_paths
from pptkit.progress import stdout

if TYPE_CHECKING:
    from pptkit.stages.evaluate import EvalOptions

EVAL_BATCH = 32


def is_object_task(checkpoint: Path) -> bool:
    """True for a task file or a finetune run folder holding one."""
    checkpoint = Path(checkpoint)
    return checkpoint.suffix == ".safetensors" or (checkpoint.is_dir() and (checkpoint / TASK_FILE).is_file())


def run_object_eval(opts: EvalOptions) -> dict[str, ClassificationScores]:
    if opts.tta or opts.export_ply is not None:
        raise InputError("is for scene models; object tasks vote over views with --votes N",
                         "--tta" if opts.tta else "--export-ply")
    if opts.votes < 0:
        raise InputError(f"must be 0 (no voting) or more, got {opts.votes}", "--votes")
    torch.manual_seed(opts.seed)
    device = resolve_device(opts.device)
    if opts.task is not None:
        task_path, backbone_path = Path(opts.task), Path(opts.checkpoint)
    else:
        checkpoint = Path(opts.checkpoint)
        task_path, backbone_path = (checkpoint / TASK_FILE if checkpoint.is_dir() else checkpoint), None
    tensors, config = read_task_file(task_path)
    recipe = from_dict(FinetuneRecipe, config["recipe"], str(task_path))
    if backbone_path is None and config["mode"] != "full":
        backbone_path = Path(config["backbone_path"])
        if not backbone_path.exists():
            raise InputError("the backbone this task was trained on is not there any more; give it with "
                             "--checkpoint BACKBONE --task TASK", backbone_path)
    backbone = None
    if backbone_path is not None:
        backbone = load_backbone(backbone_path)
        if backbone.digest != config["backbone_sha256"]:
            raise InputError(f"is not the backbone this task was trained on (content sha256 {backbone.digest[:12]}, "
                             f"the task needs {config['backbone_sha256'][:12]})", backbone.path)
    model = load_task_model(config, tensors, backbone, task_path).to(device).eval()
    class_names = list(config["class_names"])

    data = parse_named_paths(opts.data, "--data")
    if not data:
        raise InputError("give at least one object store as --data NAME=PATH.h5", "--data")
    sources = {}
    for name, path in data.items():
        source = object_sources(path, recipe.data, "--data", pooled=opts.votes > 0)
        if list(source.class_names or ()) != class_names:
            raise InputError(f"class names differ from those the task was trained with ({len(source.class_names or ())}"
                             f" vs {len(class_names)} classes)", path)
        sources[name] = source
    out = Path(opts.out) if opts.out is not None else task_path.parent / "eval" / "results.json"
    if out.is_dir():
        raise InputError("is a folder; --out names the results.json file to write", out)
    check_output(out, overwrite=True)
    if opts.export is not None:
        check_output(opts.export, overwrite=True)

    predictions = {name: _predict(model, source, data[name], recipe, opts.votes, opts.seed, device)
                   for name, source in sources.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, result in predictions.items():
        scores = result.scores(class_names)
        results[name] = scores
        plot_confusion(result.confusion(), class_names, out.parent / f"confusion_{name}.png",
                       title=f"{name} (OA {100 * scores.oa:.1f})")
    write_results_json(out, results)
    if opts.export is not None:
        Path(opts.export).parent.mkdir(parents=True, exist_ok=True)
        write_predictions_csv(opts.export, predictions, class_names)
    stdout.print(results_table(results))
    stdout.print(per_class_table(results))
    voting = f", {opts.votes} votes per object" if opts.votes else ""
    stdout.print(f"results: {out}{voting}")
    return results


def _predict(model: torch.nn.Module, source: PointSource, path: Path, recipe: FinetuneRecipe, votes: int, seed: int,
             device: torch.device) -> ObjectPredictions:
    """Logits of every object of `source` (voted over `votes` views when > 0), with names."""
    source.cache_farthest_points()  # batched, and once for all views
    batches = ordered_batches(len(source), EVAL_BATCH)
    num_workers = recipe.data.num_workers
    if votes:
        transform = vote_transform(recipe.data)
        views = [collect_logits(model, source, batches, transform, seed, view, num_workers, device)
                 for view in range(votes)]
        index, logits = views[0][0], vote([view_logits for _, view_logits in views])
    else:
        index, logits = collect_logits(model, source, batches, None, seed, 0, num_workers, device)
    order = torch.argsort(index)
    index, logits = index[order].numpy(), logits[order]
    store = source.stores[0]
    with h5py.File(path, "r") as f:
        names = [str(f[store.groups[source.items[i].index]].attrs["name"]) for i in index]
    return ObjectPredictions(names, source.labels[index].astype(np.int64), logits)
