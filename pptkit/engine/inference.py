"""Segmentation inference: predict every stored voxel of a scene, score every original point;
and per-point features of a pretrained point-patch Transformer over a whole room.

A preprocessed scene holds voxels at the store's grid size plus, per original point, its voxel
(`inverse`) and label. The model may run at a coarser grid (the recipe's `grid_size`): the
stored voxels are voxelized again and the predictions travel back through both inverses, so
the scores always count every original point.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pptkit.data.transforms import NormalizeColor
from pptkit.data.voxelize import voxelize
from pptkit.engine.batch import scene_features
from pptkit.engine.distributed import DistInfo, all_reduce_sum
from pptkit.eval.export import export_prediction_ply
from pptkit.eval.metrics import ConfusionMatrix, SegmentationScores, segmentation_scores
from pptkit.eval.voting import TTAView, VoteAccumulator
from pptkit.models.point_ops import farthest_point_sample
from pptkit.models.point_transformer import PointTransformerEncoder
from pptkit.progress import track
from pptkit.sparse import sparse_collate


@torch.no_grad()
def predict_voxels(model: torch.nn.Module, sample: dict, dataset: int, num_classes: int,
                   grid_size: float, device: torch.device,
                   views: Sequence[TTAView] = ()) -> torch.Tensor:
    """Label per stored voxel: the mean softmax over the identity view or the TTA views."""
    coord, normal = sample["coord"], sample["normal"]
    votes = VoteAccumulator(len(coord), num_classes)
    for view in views or (None,):
        view_coord = coord if view is None else view(coord)
        view_normal = normal if view is None else view.transform_normals(normal)
        vox = voxelize(view_coord, grid_size)
        view_sample = NormalizeColor()({"color": sample["color"][vox.index], "normal": view_normal[vox.index]}, None)
        feats = scene_features(view_sample)
        x, merged = sparse_collate([torch.from_numpy(vox.grid_coord)], [torch.from_numpy(feats)],
                                   device=device)
        logits = model(x, dataset)[merged]  # one row per coarse voxel
        votes.add(np.arange(len(coord)), logits[torch.from_numpy(vox.inverse).to(device)])
    return votes.predict()


def evaluate_dataset(model: torch.nn.Module, scenes, dataset: int, class_names: Sequence[str],
                     grid_size: float, device: torch.device, dist: DistInfo,
                     views: Sequence[TTAView] = (), export_dir: Path | None = None,
                     description: str = "eval") -> tuple[SegmentationScores, np.ndarray]:
    """Scores over every original point of `scenes` (a SceneDataset read with points).

    Under torchrun each rank predicts its share of the scenes and the confusion matrices are
    summed, so every rank returns the same scores.
    """
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(len(class_names))
    mine = range(dist.rank, len(scenes), dist.world_size)
    for i in track(mine, description, total=len(mine)):
        sample = scenes[i]
        voxel_pred = predict_voxels(model, sample, dataset, len(class_names), grid_size, device, views).cpu()
        point_pred = voxel_pred[torch.from_numpy(sample["inverse"].astype(np.int64))]
        confusion.update(point_pred, torch.from_numpy(sample["point_segment"].astype(np.int64)))
        if export_dir is not None:
            export_prediction_ply(export_dir / f"{sample['name'].replace('/', '__')}.ply",
                                  sample["coord"], voxel_pred.numpy(), class_names, gt=sample["segment"])
    matrix = all_reduce_sum(torch.from_numpy(confusion.matrix.copy())).numpy()
    model.train(was_training)
    return segmentation_scores(matrix, class_names), matrix


@torch.no_grad()
def room_patch_features(encoder: PointTransformerEncoder, coord: torch.Tensor, crop: int,
                        num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every point of a room from a point-patch Transformer pretrained on scene crops
    (`pptkit pretrain --crop`): (patch (N,) int64, tokens (P, C)); point i's feature is
    tokens[patch[i]], the token of the patch centre nearest it.

    The room is tiled as pretraining cut it: a crop is the `crop` points nearest an anchor, its
    `num_points` farthest points are normalised into the unit sphere and encoded without the cls
    token. Anchors are the lowest-index points not yet covered, so the tiling is deterministic
    and each point takes its patch from the first crop that holds it.
    """
    if coord.ndim != 2 or coord.shape[1] != 3:
        raise ValueError(f"coord must have shape (N, 3), got {tuple(coord.shape)}")
    coord = coord.float()
    patch = torch.full((coord.shape[0],), -1, dtype=torch.long, device=coord.device)
    tokens: list[torch.Tensor] = []
    size, offset = min(crop, coord.shape[0]), 0
    while (patch < 0).any():
        anchor = coord[int(torch.nonzero(patch < 0)[0, 0])]
        rows = (coord - anchor).square().sum(dim=1).topk(size, largest=False).indices
        points = coord[rows]
        picked = points[farthest_point_sample(points[None], min(num_points, size))[0]]
        centre = picked.mean(dim=0)
        radius = (picked - centre).norm(dim=1).max().clamp(min=1e-9)
        patches, centres = encoder.group(((picked - centre) / radius)[None])
        tokens.append(encoder.forward_tokens(encoder.embed(patches), centres, with_cls=False)[0])
        new = rows[patch[rows] < 0]
        patch[new] = offset + torch.cdist((coord[new] - centre) / radius, centres[0]).argmin(dim=1)
        offset += centres.shape[1]
    return patch, torch.cat(tokens)
