"""Test-time voting per original point, and the augmented views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pptkit.eval.voting import TTAView, VoteAccumulator, tta_views


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _logits(probabilities, device="cpu"):
    """Logits whose softmax is exactly `probabilities` (log of a distribution)."""
    return torch.log(torch.tensor(probabilities, dtype=torch.float32, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_votes_average_probabilities_per_original_point(device):
    acc = VoteAccumulator(num_points=3, num_classes=2)
    # View A sees every point once.
    acc.add(np.array([0, 1, 2]), _logits([[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], device))
    # View B: point 0 lies in two fragments, point 1 in none, point 2 once.
    acc.add(torch.tensor([0, 0, 2]), _logits([[0.6, 0.4], [0.9, 0.1], [0.1, 0.9]], device))
    # By hand: point 0 -> ((0.2+0.6+0.9)/3, (0.8+0.4+0.1)/3); 1 -> (0.6, 0.4);
    # 2 -> ((0.5+0.1)/2, (0.5+0.9)/2) = (0.3, 0.7).
    expected = torch.tensor([[1.7 / 3, 1.3 / 3], [0.6, 0.4], [0.3, 0.7]])
    assert acc.predict().device.type == device
    torch.testing.assert_close(acc.probabilities().cpu(), expected)
    assert acc.vote_counts().tolist() == [3, 1, 2]
    # Point 0: view A alone says class 1, the vote says class 0.
    assert acc.predict().tolist() == [0, 0, 1]


def test_numpy_logits_are_accepted():
    acc = VoteAccumulator(2, 3)
    acc.add(np.array([1, 0]), np.array([[0.0, 0.0, 5.0], [3.0, 0.0, 0.0]]))
    assert acc.predict().tolist() == [0, 2]


def test_point_without_vote_raises():
    acc = VoteAccumulator(num_points=4, num_classes=2)
    acc.add(np.array([0, 1, 3]), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="1 of 4 points received no vote .*first: \\[2\\]"):
        acc.predict()
    with pytest.raises(ValueError, match="no vote"):
        VoteAccumulator(2, 2).predict()


def test_bad_indices_and_shapes_raise():
    acc = VoteAccumulator(3, 2)
    with pytest.raises(ValueError, match="point indices"):
        acc.add(np.array([0, 3]), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="logits must have shape"):
        acc.add(np.array([0, 1]), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="2 point indices for 3"):
        acc.add(np.array([0, 1]), torch.zeros(3, 2))


def test_default_views_are_the_references_13_distinct_and_deterministic():
    views = tta_views()
    assert len(views) == 4 * 3 + 1  # 4 rotations at scales 1, 0.95, 1.05, and one flipped view
    assert len(set(views)) == len(views)
    assert views == tta_views()
    assert [v.name for v in views[:2]] == ["rot0_scale1", "rot90_scale1"]
    assert views[-1] == TTAView(0.0, 1.0, True)
    assert len(tta_views(rotations=(0,), scales=(1.0,), flip=False)) == 1


def test_view_geometry_about_bounding_box_centre():
    # Bounding box centred on (10, 20, 30): rotation and scale happen about that point.
    centre = np.array([10.0, 20.0, 30.0], dtype=np.float32)
    local = np.array([[1, 0, 0], [-1, 0, 0], [0, 2, 5], [0, -2, -5]], dtype=np.float32)
    coord = local + centre
    out = TTAView(rotation_deg=90, scale=1.1, flip=False)(coord)
    assert out.dtype == np.float32
    expected = 1.1 * np.array([[0, 1, 0], [0, -1, 0], [-2, 0, 5], [2, 0, -5]]) + centre
    np.testing.assert_allclose(out, expected, atol=1e-5)
    flipped = TTAView(rotation_deg=0, scale=1.0, flip=True)(coord)
    np.testing.assert_allclose(flipped, local * [-1, 1, 1] + centre, atol=1e-6)
    np.testing.assert_array_equal(TTAView(0, 1.0, False)(coord), coord)
    normal = np.array([[1, 0, 0], [0, 0.6, 0.8]], dtype=np.float32)
    np.testing.assert_allclose(TTAView(90, 1.1, False).transform_normals(normal),
                               [[0, 1, 0], [-0.6, 0, 0.8]], atol=1e-6)
    # Mirror x first, then rotate: (1, 0, 0) -> (-1, 0, 0) -> (0, -1, 0).
    np.testing.assert_allclose(TTAView(90, 1.0, True).transform_normals(normal),
                               [[0, -1, 0], [-0.6, 0, 0.8]], atol=1e-6)
    np.testing.assert_allclose(TTAView(90, 1.0, True)(coord)[0], [10, 19, 30], atol=1e-5)
    assert TTAView(90, 1.0, True).transform_normals(None) is None
    with pytest.raises(ValueError, match="coord must have shape"):
        TTAView(0, 1.0, False)(coord[:, :2])


def test_every_view_keeps_point_count_and_order():
    rng = np.random.default_rng(0)
    coord = rng.uniform(-3, 3, size=(50, 3)).astype(np.float32)
    for view in tta_views():
        out = view(coord)
        assert out.shape == coord.shape
        # Distances from the box centre scale uniformly, so the order of points is kept.
        centre = (coord.min(0) + coord.max(0)) / 2
        np.testing.assert_allclose(np.linalg.norm(out - centre, axis=1),
                                   view.scale * np.linalg.norm(coord - centre, axis=1), rtol=1e-5)
