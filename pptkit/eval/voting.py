"""Test-time augmentation: augmented views of a scene, and votes gathered per original point.

Each view (rotation about z, uniform scale, optional mirror) is voxelised and split into
fragments by the caller; the network's logits for every fragment row come back together with
the index of the ORIGINAL point each row stands for. The accumulator sums the softmax
probabilities per original point, so the final label is the argmax of the mean probability
over all the votes a point received.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


class VoteAccumulator:
    """Sum softmax probabilities per original point over any number of views and fragments.

    The sums live on the device of the first logits added (NumPy inputs count as CPU).
    """

    def __init__(self, num_points: int, num_classes: int):
        if num_points < 1 or num_classes < 1:
            raise ValueError(f"need num_points >= 1 and num_classes >= 1, "
                             f"got {num_points} and {num_classes}")
        self.num_points = num_points
        self.num_classes = num_classes
        self._prob_sum: torch.Tensor | None = None
        self._votes: torch.Tensor | None = None

    def add(self, point_index: np.ndarray | torch.Tensor, logits: np.ndarray | torch.Tensor) -> None:
        """Add one vote per row: row i of `logits` (M, C) votes for point `point_index[i]`."""
        logits = torch.as_tensor(logits)
        index = torch.as_tensor(point_index, device=logits.device).long().reshape(-1)
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (M, {self.num_classes}), "
                             f"got {tuple(logits.shape)}")
        if index.numel() != logits.shape[0]:
            raise ValueError(f"{index.numel()} point indices for {logits.shape[0]} logit rows")
        if index.numel() == 0:
            return
        low, high = torch.stack([index.min(), index.max()]).tolist()
        if low < 0 or high >= self.num_points:
            raise ValueError(f"point indices must lie in [0, {self.num_points - 1}], "
                             f"found range [{low}, {high}]")
        if self._prob_sum is None:
            self._prob_sum = torch.zeros(self.num_points, self.num_classes, device=logits.device)
            self._votes = torch.zeros(self.num_points, dtype=torch.int64, device=logits.device)
        prob = torch.softmax(logits.to(self._prob_sum.device, torch.float32), dim=1)
        index = index.to(self._prob_sum.device)
        self._prob_sum.index_add_(0, index, prob)
        self._votes.index_add_(0, index, torch.ones_like(index))

    def vote_counts(self) -> torch.Tensor:
        """How many votes each point received so far, (N,) int64."""
        if self._votes is None:
            return torch.zeros(self.num_points, dtype=torch.int64)
        return self._votes.clone()

    def probabilities(self) -> torch.Tensor:
        """Mean probability per point, (N, C); raises if any point has no vote."""
        counts = self.vote_counts()
        missing = torch.nonzero(counts == 0).reshape(-1)
        if missing.numel():
            raise ValueError(f"{missing.numel()} of {self.num_points} points received no vote "
                             f"(first: {missing[:5].tolist()}); the views' fragments must cover "
                             "every point")
        return self._prob_sum / counts.unsqueeze(1).to(self._prob_sum.dtype)

    def predict(self) -> torch.Tensor:
        """Voted label per original point, (N,) int64; raises if any point has no vote."""
        return self.probabilities().argmax(dim=1)


@dataclass(frozen=True)
class TTAView:
    """One deterministic test-time view of a scene's coordinates.

    Mirrors x (if `flip`), rotates by `rotation_deg` about the vertical axis, then scales by
    `scale`; all about the centre of the scene's bounding box, so the scene stays in place.
    Point order is kept; `transform_normals` turns normals to match.
    """

    rotation_deg: float
    scale: float
    flip: bool

    @property
    def name(self) -> str:
        """Short label for logs, e.g. ``rot90_scale1.1_flip``."""
        return f"rot{self.rotation_deg:g}_scale{self.scale:g}" + ("_flip" if self.flip else "")

    def _linear(self) -> np.ndarray:
        """The 3x3 map applied about the centre: the mirror of x (if any), then the rotation."""
        angle = np.deg2rad(self.rotation_deg)
        c, s = np.cos(angle), np.sin(angle)
        rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        mirror = np.diag([-1.0 if self.flip else 1.0, 1.0, 1.0])
        return rotation @ mirror

    def __call__(self, coord: np.ndarray) -> np.ndarray:
        coord = _check_xyz("coord", coord)
        centre = (coord.min(axis=0) + coord.max(axis=0)) / 2 if len(coord) else np.zeros(3)
        out = (coord.astype(np.float64) - centre) @ self._linear().T * self.scale + centre
        return out.astype(coord.dtype if coord.dtype.kind == "f" else np.float32)

    def transform_normals(self, normal: np.ndarray | None) -> np.ndarray | None:
        """The same mirror and rotation applied to unit normals (scale does not change them)."""
        if normal is None:
            return None
        normal = _check_xyz("normal", normal)
        return (normal.astype(np.float64) @ self._linear().T).astype(normal.dtype)


def _check_xyz(name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {array.shape}")
    return array


def tta_views(rotations: Sequence[float] = (0, 90, 180, 270),
              scales: Sequence[float] = (1.0, 0.95, 1.05), flip: bool = True) -> list[TTAView]:
    """The reference's test-time views: every rotation (degrees about z) at every scale, plus
    (with `flip`) one mirrored view at rotation 0 and scale 1.

    The order is fixed (scale, then rotation, then the flip), so the list is the same on every
    call; the defaults give 4 x 3 + 1 = 13 views, as Pointcept's semantic-segmentation tester.
    """
    views = [TTAView(float(r), float(s), False) for s, r in itertools.product(scales, rotations)]
    return views + ([TTAView(0.0, 1.0, True)] if flip else [])
