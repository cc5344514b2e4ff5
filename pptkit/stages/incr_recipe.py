"""The recipe of `pptkit incremental`: every field of `recipes/incr-*.toml`, with its default.

The model's architecture is the base run's (read from its checkpoint); this recipe says how
step t trains it. Defaults follow FMWISS (Yu et al., CVPR 2023) where it states a value
(9 seeds, a 0.7 affinity threshold, contrastive weight 0.1 at temperature 0.1, alpha 0.5, beta 0.9)
and ScanNet-scale training otherwise; `recipes/incr-tiny.toml` shrinks it for CPU tests.

Switching components off gives the baselines and ablations with the same code:
`refine.enabled`, `teacher.enabled`, `teacher.contrastive_weight = 0`, `distill.enabled`,
`--memory 0` (copy-paste). With all of them off the student fine-tunes on the initial masks
alone (the lower bound); `data.supervision = "labels"` trains on the scenes' full labels
instead of tags (the upper bound; needs --tags-from-labels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pptkit.config import bounded
from pptkit.stages.ppt_recipe import EvalConfig, OptimConfig


@dataclass
class DataConfig:
    batch_size: int = bounded(2, ge=1)  # scenes per batch per process
    num_workers: int = bounded(2, ge=0)
    grid_size: float = bounded(0.02, gt=0)  # training voxel size (metres)
    point_max: int = bounded(102400, ge=1)  # sphere-crop cap
    augment: bool = True
    # --tags-from-labels only: "disjoint" drops step-t scenes that contain a future class (a
    # class of the store that is neither old nor new); "overlap" keeps them.
    setting: Literal["overlap", "disjoint"] = "overlap"
    min_tag_voxels: int = bounded(1, ge=1)  # --tags-from-labels: voxels a class needs to count as present
    supervision: Literal["tags", "labels"] = "tags"  # "labels": the full-label upper bound


@dataclass
class MaskConfig:
    """Initial masks: the old model's uncertainty (where) times the tag-learned activation map and
    zero-shot text scores (which tagged class)."""

    zero_shot_weight: float = bounded(0.5, ge=0, le=1)  # P(class | new): zero-shot's weight (1 - it: the map's)
    threshold: float = bounded(0.15, ge=0, le=1)  # initial mask: u(x) * P(best tagged class | new) >= this
    novelty_threshold: float = bounded(0.2, ge=0, le=1)  # the activation map pools points with u(x) >= this
    cam_top_fraction: float = bounded(0.3, gt=0, le=1)  # multiple-instance pooling: mean of the top candidates
    start_epoch: int = bounded(1, ge=0)  # epochs the activation map learns before masks supervise anything
    max_fraction: float = bounded(0.05, gt=0, le=1)  # an initial or refined mask keeps at most this share of a scene


@dataclass
class RefineConfig:
    """Seed-guided refinement with the old model's (frozen) features and superpoints."""

    enabled: bool = True
    seeds: int = bounded(9, ge=1)
    seed_candidates: int = bounded(45, ge=1)  # seeds are drawn among this many top-scoring points
    # Refined mask: normalised seed affinity >= this (0.7: the top 30% of its range; FMWISS's
    # "keep the top 70%" read as a share of the range is 0.3, which here covers most of a room).
    threshold: float = bounded(0.7, ge=0, le=1)
    superpoints: bool = True  # average the affinity over superpoints
    superpoint_grid: float = bounded(0.0, ge=0)  # voxel size of the over-segmentation; 0 = data.grid_size
    superpoint_k: float = bounded(0.05, gt=0)  # Felzenszwalb threshold constant
    superpoint_colour_weight: float = bounded(1.0, ge=0)
    superpoint_min_size: int = bounded(8, ge=1)  # voxels


@dataclass
class TeacherConfig:
    """Plug-in teacher head on the student's features (dropped at inference)."""

    enabled: bool = True
    hidden_channels: int = bounded(64, ge=1)
    embed_channels: int = bounded(32, ge=1)
    contrastive_weight: float = bounded(0.1, ge=0)  # lambda of the dense contrastive loss
    temperature: float = bounded(0.1, gt=0)
    points_per_class: int = bounded(16, ge=2)  # points drawn per class per batch for the contrastive loss
    warmup_epochs: int = bounded(1, ge=0)  # before this, the student learns new classes from the fused masks


@dataclass
class DistillConfig:
    """Student targets: old classes from the step t-1 model, new classes from the teacher."""

    enabled: bool = True  # off: hard new-class labels (and pasted instances) only, other points ignored
    alpha: float = bounded(0.5, ge=0, le=1)  # hard / soft mix of the new-class targets
    beta: float = bounded(0.9, ge=0, le=1)  # old-model / teacher weight on the old classes' share


@dataclass
class CopyPasteConfig:
    """Memory-based copy-paste (on when --memory B > 0)."""

    max_instances: int = bounded(3, ge=1)  # pasted per scene (1..this)
    p: float = bounded(1.0, ge=0, le=1)  # probability that a scene gets pastes
    scale: tuple[float, float] = bounded((0.9, 1.1), gt=0)
    tries: int = bounded(20, ge=1)  # floor positions tried per instance
    min_voxels: int = bounded(20, ge=1)  # smallest instance kept in the memory (store voxels)
    max_extent: float = bounded(2.5, gt=0)  # largest instance kept (metres along any axis)


@dataclass
class TrainConfig:
    epochs: int = bounded(30, ge=1)
    clip_grad: float = bounded(0.0, ge=0)
    amp: bool = True  # mixed precision, CUDA only
    log_every: int = bounded(10, ge=1)


@dataclass
class IncrementalOptimConfig(OptimConfig):
    heads_lr_scale: float = bounded(10.0, gt=0)  # learning-rate factor of the new activation and teacher heads


def _finetune_optim() -> IncrementalOptimConfig:
    return IncrementalOptimConfig(lr=0.01, pct_start=0.1)


@dataclass
class IncrementalRecipe:
    data: DataConfig = field(default_factory=DataConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    copy_paste: CopyPasteConfig = field(default_factory=CopyPasteConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: IncrementalOptimConfig = field(default_factory=_finetune_optim)
    eval: EvalConfig = field(default_factory=EvalConfig)
