"""Confusion matrices and the scores read from them (mIoU, mAcc, OA).

Conventions (the ScanNet benchmark's, also used by Pointcept's per-scene logs):

- The matrix counts points: ``matrix[t, p]`` is the number of points of ground-truth class
  ``t`` predicted as ``p`` (rows = ground truth, columns = prediction). Points whose target
  equals ``ignore_index`` are not counted.
- IoU of class c = TP / (TP + FP + FN). A class predicted somewhere but absent from the
  ground truth has TP = 0 and union > 0, so its IoU is 0 and it lowers the mean. A class absent
  from both has union 0: its IoU is NaN (``null`` in results.json) and it is left out of mIoU.
- Accuracy of class c = TP / (TP + FN) (recall). It is NaN for a class with no ground-truth
  points, and mAcc averages over the classes that have ground-truth points.
- OA = trace / total.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


@dataclass
class SegmentationScores:
    """Scene-segmentation scores; per_class maps name -> {"iou", "acc", "support"} (NaN = undefined)."""

    miou: float
    macc: float
    oa: float
    per_class: dict[str, dict[str, float | int]]


@dataclass
class ClassificationScores:
    """Object-classification scores; per_class maps name -> {"acc", "support"} (NaN = undefined)."""

    oa: float
    macc: float
    per_class: dict[str, dict[str, float | int]]


class ConfusionMatrix:
    """Accumulate (prediction, target) label pairs into a (C, C) int64 count matrix.

    Accepts NumPy arrays and torch tensors on any device; torch inputs are counted with
    ``torch.bincount`` on their own device and only the (C, C) result is copied to the CPU.
    """

    def __init__(self, num_classes: int, ignore_index: int = -1):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """The counts so far, rows = ground truth, columns = prediction (a copy)."""
        return self._matrix.copy()

    def update(self, pred: ArrayLike, target: ArrayLike) -> None:
        """Count one batch of predicted and ground-truth labels (same shape, any shape)."""
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
            self._matrix += _torch_counts(pred, target, self.num_classes, self.ignore_index)
        else:
            self._matrix += _numpy_counts(np.asarray(pred), np.asarray(target),
                                          self.num_classes, self.ignore_index)

    def merge(self, other: ConfusionMatrix | np.ndarray) -> None:
        """Add another matrix's counts (e.g. one gathered from another process)."""
        counts = other._matrix if isinstance(other, ConfusionMatrix) else np.asarray(other)
        self._matrix += merge([counts], self.num_classes)

    def reset(self) -> None:
        """Forget all counts."""
        self._matrix[:] = 0


def merge(matrices: Iterable[np.ndarray], num_classes: int) -> np.ndarray:
    """Sum (C, C) count matrices, e.g. the per-process matrices of a distributed evaluation."""
    total = np.zeros((num_classes, num_classes), dtype=np.int64)
    for m in matrices:
        m = np.asarray(m)
        if m.shape != total.shape:
            raise ValueError(f"cannot merge a {m.shape} matrix into {total.shape}")
        if m.dtype.kind not in "iu":
            raise ValueError(f"confusion matrices hold integer counts, got dtype {m.dtype}")
        total += m.astype(np.int64)
    return total


def _check_range(name: str, low: int, high: int, num_classes: int) -> None:
    if low < 0 or high >= num_classes:
        raise ValueError(f"{name} labels must lie in [0, {num_classes - 1}] "
                         f"(or be ignore_index), found range [{low}, {high}]")


def _numpy_counts(pred: np.ndarray, target: np.ndarray, num_classes: int,
                  ignore_index: int) -> np.ndarray:
    keep = target.reshape(-1) != ignore_index
    p = pred.reshape(-1)[keep].astype(np.int64)
    t = target.reshape(-1)[keep].astype(np.int64)
    if t.size:
        _check_range("target", int(t.min()), int(t.max()), num_classes)
        _check_range("pred", int(p.min()), int(p.max()), num_classes)
    flat = np.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _torch_counts(pred: ArrayLike, target: ArrayLike, num_classes: int,
                  ignore_index: int) -> np.ndarray:
    pred_t = torch.as_tensor(pred)
    target_t = torch.as_tensor(target, device=pred_t.device)
    keep = target_t.reshape(-1) != ignore_index
    p = pred_t.reshape(-1)[keep].long()
    t = target_t.reshape(-1)[keep].long()
    if t.numel():
        # One host sync for all four bounds.
        low_t, high_t, low_p, high_p = torch.stack([t.min(), t.max(), p.min(), p.max()]).tolist()
        _check_range("target", low_t, high_t, num_classes)
        _check_range("pred", low_p, high_p, num_classes)
    flat = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)


def _validated(matrix: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    matrix = np.asarray(matrix)
    n = len(class_names)
    if matrix.shape != (n, n):
        raise ValueError(f"matrix shape {matrix.shape} does not match {n} class names")
    if matrix.sum() == 0:
        raise ValueError("the confusion matrix is empty: no labelled points to score")
    return matrix.astype(np.float64)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise numerator / denominator, NaN where the denominator is 0."""
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def segmentation_scores(matrix: np.ndarray, class_names: Sequence[str]) -> SegmentationScores:
    """mIoU, mAcc, OA and per-class IoU / accuracy / support of a (C, C) confusion matrix."""
    m = _validated(matrix, class_names)
    tp = np.diag(m)
    support = m.sum(axis=1)
    predicted = m.sum(axis=0)
    iou = _ratio(tp, support + predicted - tp)
    acc = _ratio(tp, support)
    per_class = {
        name: {"iou": float(iou[c]), "acc": float(acc[c]), "support": int(support[c])}
        for c, name in enumerate(class_names)
    }
    return SegmentationScores(miou=float(np.nanmean(iou)), macc=float(np.nanmean(acc)),
                              oa=float(tp.sum() / m.sum()), per_class=per_class)


def classification_scores(matrix: np.ndarray, class_names: Sequence[str]) -> ClassificationScores:
    """Overall accuracy and mean class accuracy (over classes with samples) of object labels."""
    m = _validated(matrix, class_names)
    tp = np.diag(m)
    support = m.sum(axis=1)
    acc = _ratio(tp, support)
    per_class = {name: {"acc": float(acc[c]), "support": int(support[c])}
                 for c, name in enumerate(class_names)}
    return ClassificationScores(oa=float(tp.sum() / m.sum()), macc=float(np.nanmean(acc)),
                                per_class=per_class)
