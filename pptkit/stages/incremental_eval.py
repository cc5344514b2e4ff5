"""`pptkit eval` of an incremental run: mIoU over the base, the novel and all learned classes.

The run's model is the student alone (the teacher and activation heads are not used). An
evaluation store is matched to the model's classes by name, so a store with the full label
list of the dataset (in its own order) scores every class the run has learned; points of
classes the run has not learned yet (later steps) are not counted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from rich.table import Table

from pptkit.config import from_dict
from pptkit.data.classes import IGNORE_INDEX
from pptkit.data.dataset import SceneDataset
from pptkit.data.tags import canonical_class_name
from pptkit.engine.distributed import DistInfo, resolve_device
from pptkit.engine.inference import evaluate_dataset
from pptkit.errors import InputError
from pptkit.eval.metrics import SegmentationScores
from pptkit.eval.report import per_class_table, plot_confusion, results_table, scores_to_json
from pptkit.eval.voting import tta_views
from pptkit.fileio import atomic_path, check_output
from pptkit.models.label_space import UnionLabelSpace
from pptkit.progress import stdout
from pptkit.stages.incr_recipe import IncrementalRecipe
from pptkit.stages.joint_train import parse_named_paths
from pptkit.stages.ppt_model import build_model
from pptkit.stages.ppt_recipe import ModelConfig

if TYPE_CHECKING:
    from pptkit.stages.evaluate import EvalOptions


def is_incremental_run(checkpoint: dict) -> bool:
    """True when the (loaded) checkpoint was written by `pptkit incremental`."""
    return "incremental" in checkpoint


def class_groups(info: dict, dataset: str, class_names: list[str]) -> dict[str, list[str]]:
    """{"base", "novel", "all", "step_1", ...}: the class names of each group for `dataset`."""
    steps = [list(s) for s in info["steps"].get(dataset, [])]
    groups = {"base": list(info["base_classes"].get(dataset, class_names)),
              "novel": [c for s in steps for c in s], "all": list(class_names)}
    if len(steps) > 1:
        groups.update({f"step_{k}": s for k, s in enumerate(steps, 1)})
    return groups


def group_miou(scores: SegmentationScores, names: list[str]) -> float:
    """Mean IoU over `names` (classes absent from ground truth and predictions left out)."""
    values = [scores.per_class[n]["iou"] for n in names if not math.isnan(scores.per_class[n]["iou"])]
    return float(np.mean(values)) if values else float("nan")


def groups_table(group_scores: dict[str, dict[str, float]]) -> Table:
    """One row per dataset, one column per class group (base, novel, all, step_k), in percent."""
    table = Table(title="Incremental mIoU (%)")
    table.add_column("dataset")
    columns = list(dict.fromkeys(g for groups in group_scores.values() for g in groups))
    for g in columns:
        table.add_column(g, justify="right")
    for name, groups in group_scores.items():
        values = [groups.get(g, float("nan")) for g in columns]
        table.add_row(name, *("-" if math.isnan(v) else f"{100 * v:.1f}" for v in values))
    return table


class RelabelledScenes:
    """An evaluation store with its labels mapped to the model's classes by name (-1 elsewhere)."""

    def __init__(self, scenes: SceneDataset, lookup: np.ndarray):
        self.scenes, self.lookup = scenes, lookup

    def __len__(self) -> int:
        return len(self.scenes)

    def _map(self, labels: np.ndarray) -> np.ndarray:
        labels = labels.astype(np.int64)
        return np.where(labels >= 0, self.lookup[np.maximum(labels, 0)], IGNORE_INDEX)

    def __getitem__(self, index: int) -> dict:
        sample = self.scenes[index]
        return {**sample, "segment": self._map(sample["segment"]), "point_segment": self._map(sample["point_segment"])}


def run_incremental_eval(opts: EvalOptions, ckpt_path: Path, ckpt: dict) -> dict[str, SegmentationScores]:
    """Score an incremental run's checkpoint `ckpt` (read from `ckpt_path` by `run_eval`)."""
    torch.manual_seed(opts.seed)
    device = resolve_device(opts.device)
    try:
        info = ckpt["incremental"]
        recipe = from_dict(IncrementalRecipe, ckpt["config"], str(ckpt_path))
        model_cfg = from_dict(ModelConfig, info["model"], str(ckpt_path))
        names, class_names = list(ckpt["datasets"]), {k: list(v) for k, v in ckpt["class_names"].items()}
        state = {k[len("student."):]: v for k, v in ckpt["model"].items() if k.startswith("student.")}
    except KeyError as exc:
        raise InputError(f"not an incremental checkpoint (missing {exc})", ckpt_path) from None
    labels = UnionLabelSpace.from_class_names(class_names)
    model = build_model(model_cfg, labels, names, torch.zeros_like(state["head.text_embeddings"]))
    model.load_state_dict(state)
    model = model.to(device).eval()

    data = parse_named_paths(opts.data, "--data")
    if not data:
        raise InputError("give at least one dataset as --data NAME=PATH.h5", "--data")
    datasets = {}
    for name, path in data.items():
        if name not in names:
            raise InputError(f"the model was not trained on '{name}' (it knows {', '.join(names)})", "--data")
        scenes = SceneDataset(path, with_points=True)
        model_keys = [canonical_class_name(n) for n in class_names[name]]
        lookup = np.array([model_keys.index(k) if k in model_keys else IGNORE_INDEX
                           for k in map(canonical_class_name, scenes.class_names)], dtype=np.int64)
        if (lookup < 0).all():
            raise InputError(f"shares no class with the model's classes for '{name}'", path)
        if len(scenes) == 0:
            raise InputError("holds no complete scene to evaluate", path)
        datasets[name] = RelabelledScenes(scenes, lookup)
    out = opts.out or ckpt_path.parent / "eval" / "results.json"
    if out.is_dir():
        raise InputError("is a folder; --out names the results.json file to write", out)
    check_output(out, overwrite=True)
    if opts.export_ply is not None:
        check_output(opts.export_ply, overwrite=True)
    out.parent.mkdir(parents=True, exist_ok=True)

    e = recipe.eval
    views = tta_views(tuple(360.0 * k / e.tta_rotations for k in range(e.tta_rotations)),
                      e.tta_scales, e.tta_flip) if opts.tta or e.tta else ()
    results: dict[str, SegmentationScores] = {}
    document, group_scores = {}, {}
    for name, scenes in datasets.items():
        export_dir = None
        if opts.export_ply is not None:
            export_dir = opts.export_ply / name
            export_dir.mkdir(parents=True, exist_ok=True)
        scores, matrix = evaluate_dataset(model, scenes, names.index(name), class_names[name], recipe.data.grid_size,
                                          device, DistInfo(0, 1, 0), views, export_dir, description=f"eval {name}")
        results[name] = scores
        groups = {g: group_miou(scores, members) for g, members in class_groups(info, name, class_names[name]).items()}
        group_scores[name] = groups
        document[name] = {**scores_to_json(scores), "groups": {g: None if math.isnan(v) else v for g, v in groups.items()}}
        plot_confusion(matrix, class_names[name], out.parent / f"confusion_{name}.png",
                       title=f"{name} (mIoU {100 * scores.miou:.1f})")
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    stdout.print(groups_table(group_scores))
    stdout.print(results_table(results))
    stdout.print(per_class_table(results))
    stdout.print(f"results: {out}")
    return results
