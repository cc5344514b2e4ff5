"""Reports of evaluation results: rich tables, results.json and confusion-matrix plots."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from rich.table import Table
from rich.text import Text  # names print literally: "[red]x" is a name, not markup

from pptkit.eval.metrics import ClassificationScores, SegmentationScores
from pptkit.fileio import atomic_path

Scores = SegmentationScores | ClassificationScores


def _percent(value: float | None) -> str:
    """A score in [0, 1] as a percentage with one decimal; '-' when undefined."""
    if value is None or math.isnan(value):
        return "-"
    return f"{100 * value:.1f}"


def results_table(results: Mapping[str, Scores]) -> Table:
    """One row per dataset: mIoU, mAcc and OA in percent (mIoU '-' for classification)."""
    table = Table(title="Evaluation results (%)")
    table.add_column("dataset")
    for column in ("mIoU", "mAcc", "OA"):
        table.add_column(column, justify="right")
    for dataset, scores in results.items():
        miou = scores.miou if isinstance(scores, SegmentationScores) else None
        table.add_row(Text(dataset), _percent(miou), _percent(scores.macc), _percent(scores.oa))
    return table


def per_class_table(results: Mapping[str, Scores]) -> Table:
    """Per-class IoU (accuracy for classification results), one column per dataset.

    Rows are the union of the datasets' class names in first-seen order; '-' marks a class a
    dataset does not have or whose score is undefined (absent from ground truth and predictions).
    """
    table = Table(title="Per-class IoU (%; accuracy for classification)")
    table.add_column("class")
    for dataset in results:
        table.add_column(Text(dataset), justify="right")
    names = list(dict.fromkeys(name for s in results.values() for name in s.per_class))
    for name in names:
        cells = []
        for scores in results.values():
            key = "iou" if isinstance(scores, SegmentationScores) else "acc"
            cls = scores.per_class.get(name)
            cells.append(_percent(None if cls is None else cls[key]))
        table.add_row(Text(name), *cells)
    return table


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def scores_to_json(scores: Scores) -> dict:
    """The results.json entry of one dataset; undefined (NaN) scores become null."""
    per_class = {
        name: {key: (int(v) if key == "support" else _json_number(v)) for key, v in cls.items()}
        for name, cls in scores.per_class.items()
    }
    head = {"miou": _json_number(scores.miou)} if isinstance(scores, SegmentationScores) else {}
    return {**head, "macc": _json_number(scores.macc), "oa": _json_number(scores.oa),
            "per_class": per_class}


def write_results_json(path: str | Path, results: Mapping[str, Scores]) -> None:
    """Write {dataset: {"miou", "macc", "oa", "per_class": {name: {"iou", "acc", "support"}}}}.

    Classification entries have no "miou" and no per-class "iou". Written atomically; the file
    is strict JSON (no NaN tokens).
    """
    document = {dataset: scores_to_json(scores) for dataset, scores in results.items()}
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=2, allow_nan=False)
            f.write("\n")


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: str | Path,
                   title: str) -> None:
    """Save a row-normalised confusion matrix (rows = ground truth) as a PNG, atomically.

    Each row shows where that class's points went; rows of classes with no ground-truth points
    are drawn grey. Cell values are printed when there are at most 25 classes.
    """
    # Imported here so that `import pptkit.eval` stays cheap for training loops.
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=np.float64)
    n = len(class_names)
    if counts.shape != (n, n):
        raise ValueError(f"matrix shape {counts.shape} does not match {n} class names")
    support = counts.sum(axis=1, keepdims=True)
    rates = np.full_like(counts, np.nan)
    np.divide(counts, support, out=rates, where=support > 0)

    side = max(6.0, 0.42 * n + 2.5)
    fig = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["Blues"].with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(rates), cmap=cmap, vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of ground-truth row")
    ax.set_xticks(range(n), labels=class_names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), labels=class_names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title)
    if n <= 25:
        for t in range(n):
            for p in range(n):
                if not np.isnan(rates[t, p]) and rates[t, p] >= 0.005:
                    ax.text(p, t, f"{rates[t, p]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if rates[t, p] > 0.6 else "black")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
