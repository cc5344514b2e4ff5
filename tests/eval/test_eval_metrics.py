"""Confusion matrix and scores against small examples worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pptkit.eval.metrics import (
    ConfusionMatrix,
    classification_scores,
    merge,
    segmentation_scores,
)

NAMES = ("a", "b", "c", "d")

# Per point: ground truth, prediction. Class "d" never occurs in the ground truth; the last
# point is ignored (target -1) although it is predicted as "d", so "d" stays absent entirely.
TARGET = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, -1])
PRED = np.array([0, 0, 0, 1, 1, 1, 2, 2, 0, 3])

# Counted by hand (rows = ground truth, columns = prediction).
EXPECTED = np.array([
    [3, 1, 0, 0],
    [0, 2, 1, 0],
    [1, 0, 1, 0],
    [0, 0, 0, 0],
])


def test_matrix_matches_hand_count_and_ignores_ignore_index():
    cm = ConfusionMatrix(4, ignore_index=-1)
    cm.update(PRED, TARGET)
    assert cm.matrix.dtype == np.int64
    np.testing.assert_array_equal(cm.matrix, EXPECTED)


def test_scores_of_hand_example_exclude_class_absent_everywhere():
    # IoU = TP / (TP + FP + FN): a = 3/(3+1+1), b = 2/(2+1+1), c = 1/(1+1+1), d undefined.
    # Acc = TP / (TP + FN): a = 3/4, b = 2/3, c = 1/2, d undefined.
    s = segmentation_scores(EXPECTED, NAMES)
    assert s.per_class["a"]["iou"] == pytest.approx(3 / 5)
    assert s.per_class["b"]["iou"] == pytest.approx(1 / 2)
    assert s.per_class["c"]["iou"] == pytest.approx(1 / 3)
    assert math.isnan(s.per_class["d"]["iou"]) and math.isnan(s.per_class["d"]["acc"])
    assert [s.per_class[n]["support"] for n in NAMES] == [4, 3, 2, 0]
    assert s.miou == pytest.approx((3 / 5 + 1 / 2 + 1 / 3) / 3)  # 43/90
    assert s.macc == pytest.approx((3 / 4 + 2 / 3 + 1 / 2) / 3)  # 23/36
    assert s.oa == pytest.approx(6 / 9)


def test_class_predicted_but_absent_from_ground_truth_has_iou_zero():
    # One more "c" point, predicted as "d": d gets TP 0, FP 1 -> IoU 0, counted in mIoU.
    cm = ConfusionMatrix(4)
    cm.update(np.append(PRED, 3), np.append(TARGET, 2))
    s = segmentation_scores(cm.matrix, NAMES)
    assert s.per_class["c"]["iou"] == pytest.approx(1 / 4)
    assert s.per_class["d"]["iou"] == 0.0
    assert math.isnan(s.per_class["d"]["acc"])
    assert s.miou == pytest.approx((3 / 5 + 1 / 2 + 1 / 4 + 0) / 4)  # 27/80
    assert s.macc == pytest.approx((3 / 4 + 2 / 3 + 1 / 3) / 3)  # 7/12
    assert s.oa == pytest.approx(6 / 10)


def test_other_ignore_index_value():
    cm = ConfusionMatrix(4, ignore_index=255)
    cm.update(PRED[:-1], TARGET[:-1])
    cm.update(np.array([1, 2]), np.array([255, 255]))
    np.testing.assert_array_equal(cm.matrix, EXPECTED)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_torch_inputs_any_shape_and_dtype_match_numpy(device):
    cm = ConfusionMatrix(4)
    pred = torch.as_tensor(PRED, dtype=torch.int16, device=device).reshape(2, 5)
    target = torch.as_tensor(TARGET, dtype=torch.int64, device=device).reshape(2, 5)
    cm.update(pred, target)
    np.testing.assert_array_equal(cm.matrix, EXPECTED)
    cm.update(PRED, TARGET)  # numpy after torch keeps accumulating
    np.testing.assert_array_equal(cm.matrix, 2 * EXPECTED)


def test_out_of_range_labels_and_shape_mismatch_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="target labels"):
        cm.update(np.array([0]), np.array([3]))
    with pytest.raises(ValueError, match="pred labels"):
        cm.update(torch.tensor([5]), torch.tensor([1]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.array([0, 1]), np.array([0]))
    assert cm.matrix.sum() == 0


def test_merge_sums_matrices_like_one_accumulation():
    halves = []
    for part in (slice(0, 5), slice(5, None)):
        cm = ConfusionMatrix(4)
        cm.update(PRED[part], TARGET[part])
        halves.append(cm.matrix)
    np.testing.assert_array_equal(merge(halves, 4), EXPECTED)
    whole = ConfusionMatrix(4)
    whole.merge(halves[0])
    other = ConfusionMatrix(4)
    other.update(PRED[5:], TARGET[5:])
    whole.merge(other)
    np.testing.assert_array_equal(whole.matrix, EXPECTED)
    with pytest.raises(ValueError, match="cannot merge"):
        merge([np.zeros((3, 3), dtype=np.int64)], 4)


def test_empty_matrix_and_name_mismatch_raise():
    with pytest.raises(ValueError, match="empty"):
        segmentation_scores(np.zeros((4, 4), dtype=np.int64), NAMES)
    with pytest.raises(ValueError, match="class names"):
        segmentation_scores(EXPECTED, NAMES[:3])


def test_classification_scores_hand_example():
    # 3 object classes: x has 3 samples (2 right), y has 1 (right), z has 2 (0 right).
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 0, 1, 1, 0, 1]), np.array([0, 0, 0, 1, 2, 2]))
    s = classification_scores(cm.matrix, ("x", "y", "z"))
    assert s.oa == pytest.approx(3 / 6)
    assert s.macc == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert s.per_class["x"] == {"acc": pytest.approx(2 / 3), "support": 3}
    assert s.per_class["z"]["acc"] == 0.0
