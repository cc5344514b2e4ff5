"""From scene dicts (NumPy) to model inputs (a SparseTensor) and per-row targets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pptkit.sparse import SparseTensor, sparse_collate

FEATURE_CHANNELS = 6  # colour (3) + normal (3)


def scene_features(sample: dict) -> np.ndarray:
    """Per-voxel input features: the colour as NormalizeColor left it ([-1, 1]), then the normal."""
    color = np.asarray(sample["color"])
    if color.dtype == np.uint8:
        raise ValueError("colours must be normalised (pptkit.data.transforms.NormalizeColor) before batching")
    return np.concatenate([color.astype(np.float32), np.asarray(sample["normal"], dtype=np.float32)], axis=1)


@dataclass
class Batch:
    """One step's input: scenes of one dataset merged into a SparseTensor.

    `target` and `inverse` are per input row (a row is a voxel of one scene); duplicates that
    the collation merged share a voxel, so per-row logits are `logits[inverse]`.
    """

    input: SparseTensor
    target: torch.Tensor
    inverse: torch.Tensor
    dataset: int


def collate(samples: list[dict], dataset: int, device: torch.device) -> Batch:
    """Merge scenes (each with grid_coord, color, normal, segment) into one Batch on `device`."""
    grid = [torch.as_tensor(np.asarray(s["grid_coord"]), dtype=torch.int32) for s in samples]
    feats = [torch.from_numpy(scene_features(s)) for s in samples]
    x, inverse = sparse_collate(grid, feats, device=device)
    target = torch.from_numpy(np.concatenate([np.asarray(s["segment"]) for s in samples]).astype(np.int64))
    return Batch(x, target.to(device), inverse, dataset)
