"""Model pieces of weakly incremental segmentation (FMWISS, Yu et al., CVPR 2023, carried to points).

- `ClassActivationHead`: WILSON's localizer on points: per-point new-class logits on the
  student's features, learned from the scene tags alone by multiple-instance pooling
  (`mil_pool`: a scene's score for a class is the mean of its top-scoring candidate points',
  the candidates being where the old model is unsure). A softmax over the scene's tagged
  classes is the activation map; the old model's uncertainty, not the map, says where.
- `PlugInTeacherHead`: a point-wise MLP on the student's backbone features that predicts the
  new classes (per-point sigmoid, trained on the fused pseudo masks by `balanced_bce`) and an
  embedding for the dense contrastive loss. It only provides training targets and is dropped at inference.
- `IncrementalModel`: the student (a Point Prompt Training model whose language-guided head
  covers old + new classes) with the two heads. `forward(x, dataset)` is the student alone,
  so inference and evaluation see a plain segmentation model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pptkit.models.pdnorm import DomainCondition
from pptkit.models.ppt import PointPromptModel
from pptkit.sparse import SparseTensor


def backbone_features(model: PointPromptModel, x: SparseTensor, dataset_index: int) -> torch.Tensor:
    """Per-voxel backbone features of a Point Prompt Training model (its head's input)."""
    prompt = None if model.prompts is None else model.prompts(dataset_index)
    if model.injection is not None:
        x = x.replace(model.injection(x.feats, prompt))
    x = x.with_condition(DomainCondition(dataset_index, prompt))
    return model.backbone(x).feats.feats


def mil_pool(logits: torch.Tensor, scene: torch.Tensor, num_scenes: int, top_fraction: float,
             candidate: torch.Tensor | None = None) -> torch.Tensor:
    """(S, K) scene scores: per scene and class, the mean of the top `top_fraction` of its point
    logits (at least one point). `scene` (N,) gives each point's scene in 0..S-1; `candidate` (N,)
    bool restricts the pool to those points in scenes that have any."""
    pooled = []
    for s in range(num_scenes):
        mine = scene == s
        if candidate is not None and (mine & candidate).any():
            mine = mine & candidate
        rows = logits[mine]
        k = max(1, int(round(top_fraction * rows.shape[0])))
        pooled.append(rows.topk(min(k, rows.shape[0]), dim=0).values.mean(dim=0))
    return torch.stack(pooled)


class ClassActivationHead(nn.Module):
    """A linear per-point classifier over the new classes (logits)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(feats)


class PlugInTeacherHead(nn.Module):
    """Two Linear-BatchNorm-ReLU layers, then new-class logits and an L2-normalised embedding."""

    def __init__(self, in_channels: int, num_classes: int, hidden_channels: int = 64, embed_channels: int = 32):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(in_channels, hidden_channels, bias=False), nn.BatchNorm1d(hidden_channels), nn.ReLU(),
            nn.Linear(hidden_channels, hidden_channels, bias=False), nn.BatchNorm1d(hidden_channels), nn.ReLU(),
        )
        self.classifier = nn.Linear(hidden_channels, num_classes)
        self.embed = nn.Linear(hidden_channels, embed_channels)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.trunk(feats)
        return self.classifier(hidden), F.normalize(self.embed(hidden), dim=1)


class IncrementalModel(nn.Module):
    """Student + class-activation head + plug-in teacher, both heads on the student's features.

    forward(x, dataset) -> student logits (N_voxels, K_old + K_new); with `heads=True`, a dict
    with "logits", "cam" and, when there is a teacher, "teacher_logits" and "teacher_embed".
    """

    def __init__(self, student: PointPromptModel, cam: ClassActivationHead, teacher: PlugInTeacherHead | None):
        super().__init__()
        self.student = student
        self.cam = cam
        self.teacher = teacher

    def forward(self, x: SparseTensor, dataset_index: int,
                heads: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        if not heads:
            return self.student(x, dataset_index)
        feats = backbone_features(self.student, x, dataset_index)
        out = {"logits": self.student.head(feats, dataset_index), "cam": self.cam(feats)}
        if self.teacher is not None:
            out["teacher_logits"], out["teacher_embed"] = self.teacher(feats)
        return out
