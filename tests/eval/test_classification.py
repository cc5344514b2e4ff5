"""Object classification results on hand-made logits: voting, scores, CSV export."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch

from pptkit.eval.classification import CSV_COLUMNS, ObjectPredictions, vote, write_predictions_csv

NAMES = ["cup", "cone", "vase"]


def test_vote_averages_logits_not_probabilities():
    # One view is sure of class 0, two mildly prefer class 1: the logit mean picks class 0,
    # although the mean of the softmax probabilities would pick class 1.
    views = [torch.tensor([[6.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[0.0, 2.0]])]
    assert torch.allclose(vote(views), torch.tensor([[2.0, 4.0 / 3.0]]))
    assert vote(views).argmax().item() == 0
    assert sum(torch.softmax(v, 1) for v in views).argmax().item() == 1
    assert torch.equal(vote(views[:1]), views[0])


def test_vote_refuses_views_of_different_objects():
    with pytest.raises(ValueError, match="one \\(N, K\\) shape"):
        vote([torch.zeros(2, 3), torch.zeros(3, 3)])
    with pytest.raises(ValueError, match="at least one view"):
        vote([])


def predictions() -> ObjectPredictions:
    # Objects: cup ok, cup -> cone, cone ok, vase ok, vase ok.
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 5.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 2.0]])
    return ObjectPredictions([f"o{i}" for i in range(5)], np.array([0, 0, 1, 2, 2]), logits)


def test_scores_of_hand_made_predictions():
    scores = predictions().scores(NAMES)
    assert scores.oa == pytest.approx(4 / 5)
    assert scores.per_class["cup"] == {"acc": 0.5, "support": 2}
    assert scores.per_class["cone"] == {"acc": 1.0, "support": 1}
    assert scores.macc == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert predictions().confusion().tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 2]]


def test_a_class_without_objects_is_left_out_of_macc():
    result = ObjectPredictions(["a", "b"], np.array([0, 0]), torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    scores = result.scores(NAMES)
    assert math.isnan(scores.per_class["vase"]["acc"]) and scores.per_class["vase"]["support"] == 0
    assert scores.macc == pytest.approx(0.5)


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError, match="must match"):
        ObjectPredictions(["a"], np.array([0, 1]), torch.zeros(2, 3))


def test_csv_has_one_row_per_object_with_names_and_confidence(tmp_path):
    path = tmp_path / "out" / "predictions.csv"
    path.parent.mkdir()
    write_predictions_csv(path, {"test": predictions(), "extra": predictions()}, NAMES)
    rows = list(csv.reader(path.open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 1 + 10
    assert rows[1] == ["test", "o0", "cup", "cup", "1",
                       f"{torch.softmax(torch.tensor([3.0, 0.0, 0.0]), 0)[0].item():.4f}"]
    assert rows[2][:5] == ["test", "o1", "cup", "cone", "0"]
    assert rows[6][0] == "extra"
    assert not (tmp_path / "out" / "predictions.csv.tmp").exists()
