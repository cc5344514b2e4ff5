"""The Point Prompt Training recipe: every field of `recipes/ppt-*.toml`, with its default.

Defaults follow the PPT paper's ScanNet + S3DIS + Structured3D run; `recipes/ppt-tiny.toml`
shrinks them for CPU demos and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pptkit.config import bounded


@dataclass
class ModelConfig:
    backbone: Literal["spunet", "minkunet14", "minkunet18", "minkunet34"] = "spunet"
    base_channels: int = bounded(32, ge=1)
    channels: tuple[int, ...] = bounded((32, 64, 128, 256, 256, 128, 96, 96), ge=1)  # spunet only
    layers: tuple[int, ...] = bounded((2, 3, 4, 6, 2, 2, 2, 2), ge=1)  # spunet only
    backend: Literal["torch", "minkowski"] = "torch"
    conv_init: Literal["trunc_normal", "uniform"] = "trunc_normal"  # the reference's: std 0.02
    norm_eps: float = bounded(1e-3, gt=0)
    norm_momentum: float = bounded(0.01, gt=0, le=1)  # running-statistics momentum; short CPU schedules need more (0.1)
    adapter: Literal["pdnorm", "direct", "none"] = "pdnorm"  # how the domain prompt enters
    head: Literal["language", "decoupled", "unionized"] = "language"
    context_channels: int = bounded(256, ge=1)  # domain prompt size
    logit_scale: float = bounded(100.0, gt=0, le=100)  # language-guided head: CLIP's scale, as the reference
    learnable_logit_scale: bool = False  # the reference keeps it frozen
    text_encoder: Literal["minilm", "clip"] = "minilm"
    clip_weights: str = ""  # local open_clip weights file, for text_encoder = "clip"
    clip_model: str = "ViT-B-16"
    prompt_template: str = "{}"  # the class name as it is, as the reference embeds it


@dataclass
class DatasetTransformConfig:
    """Per-dataset training crop (`[data.transforms.<dataset>]`), as the reference's chains."""

    crop_rate: float | None = bounded(None, gt=0, le=1)  # keep this fraction of the points (sphere crop)
    point_max: int = bounded(100000, ge=1)  # then at most this many


def _reference_transforms() -> dict[str, DatasetTransformConfig]:
    return {"structured3d": DatasetTransformConfig(crop_rate=0.8, point_max=204800),
            "scannet": DatasetTransformConfig(point_max=102400),
            "s3dis": DatasetTransformConfig(crop_rate=0.6, point_max=204800)}


@dataclass
class DataConfig:
    # Batches per dataset in one interleaving cycle; datasets trained are those given with --data.
    ratios: dict[str, int] = field(default_factory=lambda: {"structured3d": 4, "scannet": 2, "s3dis": 1},
                                   metadata={"ge": 1})
    batch_size: int = bounded(2, ge=1)  # scenes per batch per process
    num_workers: int = bounded(2, ge=0)
    grid_size: float = bounded(0.02, gt=0)  # training voxel size (metres)
    point_max: int = bounded(204800, ge=1)  # sphere-crop cap for every dataset, on top of its own
    transforms: dict[str, DatasetTransformConfig] = field(default_factory=_reference_transforms)
    mix_prob: float = bounded(0.8, ge=0, le=1)  # Mix3D: chance that a batch's scenes are overlaid in pairs
    train_on: Literal["points", "voxels"] = "points"  # original points (re-voxelized per step) or the stored voxels
    epoch_by: str = ""  # the dataset whose one pass is an epoch; "" = the first of `ratios` trained
    augment: bool = True


@dataclass
class TrainConfig:
    epochs: int = bounded(100, ge=1)
    eval_every: int = bounded(1, ge=1)  # epochs between validations (when --val is given)
    clip_grad: float = bounded(0.0, ge=0)  # max gradient norm; 0 (the reference) turns clipping off
    amp: bool = True  # mixed precision, CUDA only
    log_every: int = bounded(10, ge=1)  # steps between metrics.jsonl lines


@dataclass
class OptimConfig:
    lr: float = bounded(0.05, gt=0)
    momentum: float = bounded(0.9, ge=0, le=1)
    weight_decay: float = bounded(1e-4, ge=0)
    nesterov: bool = True
    scheduler: Literal["onecycle", "cosine", "constant"] = "onecycle"
    pct_start: float = bounded(0.05, gt=0, le=1)
    div_factor: float = bounded(10.0, gt=0)
    final_div_factor: float = bounded(10000.0, gt=0)  # the reference's OneCycle
    prompt_lr_scale: float = bounded(0.1, ge=0)  # learning-rate factor for prompts and PDNorm modulation


@dataclass
class EvalConfig:
    tta: bool = False  # `pptkit eval` votes over the views below even without --tta
    tta_scales: tuple[float, ...] = bounded((1.0, 0.95, 1.05), gt=0)  # the reference's views
    tta_rotations: int = bounded(4, ge=1)  # rotations about z (multiples of 360/n degrees)
    tta_flip: bool = True  # plus one mirrored view


@dataclass
class PPTRecipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
