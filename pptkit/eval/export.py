"""Export predictions as coloured PLY point clouds for viewing (Open3D, MeshLab, CloudCompare)."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pptkit.data.ply import write_ply
from pptkit.fileio import atomic_path

# Matplotlib's "tab20" colours, the ten saturated ones first so that up to ten classes get ten
# clearly different hues; the pale partners follow.
_TAB20 = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
], dtype=np.uint8)

_GOLDEN_RATIO = 0.618033988749895


def default_palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours, the same on every call and pairwise different.

    The first 20 are tab20's; further classes step the hue by the golden ratio (which keeps
    consecutive hues far apart) and cycle through three brightness / saturation levels.
    """
    extra = []
    for k in range(max(num_classes - len(_TAB20), 0)):
        hue = (k * _GOLDEN_RATIO) % 1.0
        saturation, value = ((0.85, 0.75), (0.55, 0.95), (0.95, 0.5))[k % 3]
        extra.append([round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value)])
    colours = np.concatenate([_TAB20, np.asarray(extra, dtype=np.uint8).reshape(-1, 3)])
    return colours[:num_classes].copy()


def _numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def export_prediction_ply(path: str | Path, coord: np.ndarray | torch.Tensor,
                          pred: np.ndarray | torch.Tensor, class_names: Sequence[str],
                          palette: np.ndarray | None = None,
                          gt: np.ndarray | torch.Tensor | None = None) -> None:
    """Write a binary PLY: x y z (float), red green blue (uchar, the predicted class's colour),
    `label` (int, predicted class) and, when given, `gt` (int, ground truth; -1 = ignored).

    `palette` is (C, 3) with values 0-255, one row per class; default: `default_palette`.
    Written atomically.
    """
    coord = _numpy(coord)
    pred = _numpy(pred).reshape(-1)
    n, num_classes = len(coord), len(class_names)
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise ValueError(f"coord must have shape (N, 3), got {coord.shape}")
    if pred.shape != (n,):
        raise ValueError(f"pred has {pred.size} labels for {n} points")
    if pred.dtype.kind not in "iu":
        raise ValueError(f"pred must hold integer labels, got dtype {pred.dtype}")
    if n and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"pred labels must lie in [0, {num_classes - 1}], "
                         f"found range [{pred.min()}, {pred.max()}]")
    colours = default_palette(num_classes) if palette is None else np.asarray(palette)
    if colours.ndim != 2 or colours.shape[1] != 3 or len(colours) < num_classes:
        raise ValueError(f"palette must have shape (>= {num_classes}, 3), got {colours.shape}")
    if colours.min() < 0 or colours.max() > 255:
        raise ValueError("palette values must lie in 0-255")
    rgb = colours.astype(np.uint8)[pred]
    vertex = {
        "x": coord[:, 0].astype(np.float32), "y": coord[:, 1].astype(np.float32),
        "z": coord[:, 2].astype(np.float32),
        "red": rgb[:, 0], "green": rgb[:, 1], "blue": rgb[:, 2],
        "label": pred.astype(np.int32),
    }
    if gt is not None:
        gt = _numpy(gt).reshape(-1)
        if gt.shape != (n,):
            raise ValueError(f"gt has {gt.size} labels for {n} points")
        vertex["gt"] = gt.astype(np.int32)
    with atomic_path(path) as tmp:
        write_ply(tmp, vertex, binary=True)
