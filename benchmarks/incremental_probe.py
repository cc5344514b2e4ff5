"""How well can the frozen base model's features find the new classes at all? (diagnosis for
benchmarks/incremental.py; ground truth used only here).

On each seed's step rooms (the same rooms, stores and base models as benchmarks/incremental.py,
reused from its --work folder or made there), per voxel:

- where, from the old model's output: its uncertainty u (normalised entropy) against "any new
  class", at the recipe's masks.novelty_threshold and at the best threshold;
- where and which, from its features with full labels: a class-balanced linear softmax classifier
  (old / each new class) trained on the true labels of the even-numbered rooms, scored on the
  odd ones; new-vs-old at the best threshold on P(new), and per class.

The second is what a mask read off these frozen features could reach with perfect supervision;
the pseudo masks in incremental.md come from tags alone.

Run: python benchmarks/incremental_probe.py [--work benchmarks/.work/incremental] [--seeds 0 1 2]
Writes benchmarks/results/incremental_probe.md and .json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from incremental import (NEW, RESULTS, STEP_RECIPE, add_scale_arguments, new_class_truth, prepare_seed, scale_from,
                         write_results)


def step_voxels(base: Path, store: Path, grid: float) -> dict[str, np.ndarray]:
    """Per voxel of every step room: frozen base features, old-model uncertainty, new-class index
    (-1: an old class) and room index."""
    from pptkit.data.dataset import SceneDataset
    from pptkit.data.transforms import eval_transforms
    from pptkit.models.incremental import backbone_features
    from pptkit.models.pseudo_masks import novelty
    from pptkit.stages.incremental import build_old_model, collate_step, extend_label_space, load_base_run

    info = load_base_run(base)
    old_labels, _ = extend_label_space(info, "scannet", NEW)
    old = build_old_model(info, old_labels)
    scenes = SceneDataset(store)
    new_labels = [list(scenes.class_names).index(c) for c in NEW]
    parts: dict[str, list[np.ndarray]] = {"feats": [], "u": [], "truth": [], "room": []}
    for i in range(len(scenes)):
        raw = scenes[i]
        truth = new_class_truth(raw["segment"], new_labels)
        sample = eval_transforms(grid)({**raw, "segment": truth, "superpoint": np.zeros(len(truth), np.int64)},
                                       np.random.default_rng(0))
        batch = collate_step([sample], np.ones((1, len(NEW)), bool), torch.device("cpu"))
        with torch.no_grad():
            feats = backbone_features(old, batch.input, 0)
            u = novelty(old.head(feats, 0).float().softmax(dim=1))
        voxel_truth = np.full(feats.shape[0], -1)
        voxel_truth[batch.inverse.numpy()] = batch.target.numpy()
        parts["feats"].append(feats.float().numpy())
        parts["u"].append(u.numpy())
        parts["truth"].append(voxel_truth)
        parts["room"].append(np.full(feats.shape[0], i))
    return {k: np.concatenate(v) for k, v in parts.items()}


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = (pred | truth).sum()
    return float((pred & truth).sum() / union) if union else float("nan")


def best_threshold_iou(score: np.ndarray, truth: np.ndarray) -> float:
    return max(iou(score >= np.quantile(score, q), truth) for q in np.linspace(0.5, 0.995, 100))


def linear_probe(feats: np.ndarray, labels: np.ndarray, num_classes: int, seed: int) -> torch.nn.Linear:
    """A class-balanced softmax classifier on standardised features, fitted by L-BFGS."""
    torch.manual_seed(seed)
    x, y = torch.from_numpy(feats), torch.from_numpy(labels).long()
    counts = torch.bincount(y, minlength=num_classes).clamp(min=1).float()
    weight = counts.sum() / (num_classes * counts)
    model = torch.nn.Linear(x.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(model.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y, weight=weight) + 1e-4 * model.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model


def probe_seed(seed: int, work: Path, scale, novelty_threshold: float) -> dict:
    data = prepare_seed(seed, work, scale)
    v = step_voxels(data.base, data.step_pool, scale.grid)
    is_new = v["truth"] >= 0
    mean, std = v["feats"].mean(axis=0), v["feats"].std(axis=0) + 1e-6
    feats = ((v["feats"] - mean) / std).astype(np.float32)
    train, test = v["room"] % 2 == 0, v["room"] % 2 == 1
    probe = linear_probe(feats[train], v["truth"][train] + 1, len(NEW) + 1, seed)
    with torch.no_grad():
        prob = probe(torch.from_numpy(feats[test])).softmax(dim=1).numpy()
    pred, truth = prob.argmax(axis=1) - 1, v["truth"][test]
    return {
        "seed": seed,
        "new_fraction": float(is_new.mean()),
        "u_recipe_threshold": iou(v["u"] >= novelty_threshold, is_new),
        "u_best_threshold": best_threshold_iou(v["u"], is_new),
        "probe_new_vs_old": best_threshold_iou(1 - prob[:, 0], truth >= 0),
        "probe_per_class": {c: iou(pred == k, truth == k) for k, c in enumerate(NEW)},
        "u_recall_per_class": {c: float((v["u"][v["truth"] == k] >= novelty_threshold).mean())
                               for k, c in enumerate(NEW)},
    }


def report(results: list[dict], novelty_threshold: float, minutes: float) -> str:
    def cell(values):
        values = 100 * np.array(values)
        return f"{np.nanmean(values):.1f} ± {np.nanstd(values):.1f}"

    lines = [
        "# What the frozen base features can find (`benchmarks/incremental_probe.py`)", "",
        f"Step rooms of benchmarks/incremental.py, per voxel, seeds {[r['seed'] for r in results]}, mean ± std; "
        f"{minutes:.1f} min. New-class voxels: {cell([r['new_fraction'] for r in results])}% of the rooms. "
        "IoU % against the true new-class voxels (the best threshold is picked on the scored voxels themselves, "
        "an optimistic ceiling for both rows that use it).", "",
        "| where the new objects are | IoU |", "|---|---:|",
        f"| old model's uncertainty u >= {novelty_threshold:g} (the recipe's gate) | "
        f"{cell([r['u_recipe_threshold'] for r in results])} |",
        f"| old model's uncertainty u, best threshold | {cell([r['u_best_threshold'] for r in results])} |",
        f"| linear probe on frozen features, full labels (even rooms -> odd rooms), best threshold | "
        f"{cell([r['probe_new_vs_old'] for r in results])} |", "",
        "Per new class: the probe's IoU (its argmax over old + new classes) and the share of the class's voxels the "
        "uncertainty gate lets through:", "",
        "| | " + " | ".join(NEW) + " |", "|---|" + "---:|" * len(NEW),
        "| linear probe IoU, full labels | " + " | ".join(cell([r["probe_per_class"][c] for r in results]) for c in NEW)
        + " |",
        "| u >= gate, recall | " + " | ".join(cell([r["u_recall_per_class"][c] for r in results]) for c in NEW) + " |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    from pptkit.config import load_recipe
    from pptkit.progress import set_quiet
    from pptkit.stages.incr_recipe import IncrementalRecipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_scale_arguments(parser)
    parser.add_argument("--out", type=Path, default=RESULTS / "incremental_probe.md")
    args = parser.parse_args()
    set_quiet(True)
    novelty_threshold = load_recipe(STEP_RECIPE, IncrementalRecipe).masks.novelty_threshold
    started = time.perf_counter()
    results = [probe_seed(s, args.work, scale_from(args), novelty_threshold) for s in args.seeds]
    text = report(results, novelty_threshold, (time.perf_counter() - started) / 60)
    print(text)
    write_results(args.out, text, results)


if __name__ == "__main__":
    main()
