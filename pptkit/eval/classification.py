"""Object classification results: votes over views, scores, and predictions as CSV.

Voting follows the reference (Point-MAE / PointGST `--vote`): the logits of every view of an
object are averaged and the class is their argmax. Scores (OA, mAcc, per-class accuracy) come
from the confusion matrix, rows = ground truth (`pptkit.eval.metrics`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pptkit.eval.metrics import ClassificationScores, ConfusionMatrix, classification_scores
from pptkit.fileio import atomic_path

CSV_COLUMNS = ("dataset", "object", "label", "prediction", "correct", "confidence")


def vote(view_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean of the logits (N, K) of every view of the same N objects."""
    if not view_logits:
        raise ValueError("need at least one view")
    shapes = {tuple(v.shape) for v in view_logits}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"every view needs logits of one (N, K) shape, got {sorted(shapes)}")
    return torch.stack([v.float() for v in view_logits]).mean(dim=0)


@dataclass
class ObjectPredictions:
    """One dataset's objects: names, ground-truth labels and (voted) logits, in one order."""

    names: list[str]
    labels: np.ndarray  # (N,) int64
    logits: torch.Tensor  # (N, K) float32

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.labels) == self.logits.shape[0]:
            raise ValueError(f"{len(self.names)} names, {len(self.labels)} labels and "
                             f"{self.logits.shape[0]} logit rows must match")

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(dim=1).numpy()

    @property
    def confidence(self) -> np.ndarray:
        """Softmax probability of the predicted class."""
        return torch.softmax(self.logits, dim=1).amax(dim=1).numpy()

    def confusion(self) -> np.ndarray:
        """(K, K) counts, rows = ground truth."""
        matrix = ConfusionMatrix(self.logits.shape[1])
        matrix.update(self.predictions, self.labels)
        return matrix.matrix

    def scores(self, class_names: Sequence[str]) -> ClassificationScores:
        return classification_scores(self.confusion(), class_names)


def write_predictions_csv(path: str | Path, results: dict[str, ObjectPredictions], class_names: Sequence[str]) -> None:
    """One row per object of every dataset (CSV_COLUMNS; labels as class names), atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for dataset, result in results.items():
                for name, label, pred, conf in zip(result.names, result.labels, result.predictions,
                                                   result.confidence):
                    writer.writerow([dataset, name, class_names[label], class_names[pred], int(label == pred),
                                     f"{conf:.4f}"])
