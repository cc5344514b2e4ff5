"""The Point Prompt Training recipe: every field of `recipes/ppt-*.toml`, with its default.

Defaults follow the PPT paper's ScanNet + S3DIS + Structured3D run; `recipes/ppt-tiny.toml`
shrinks them for CPU demos and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ModelConfig:
    backbone: Literal["spunet", "minkunet14", "minkunet18", "minkunet34"] = "spunet"
    base_channels: int = 32
    channels: tuple[int, ...] = (32, 64, 128, 256, 256, 128, 96, 96)  # spunet only
    layers: tuple[int, ...] = (2, 3, 4, 6, 2, 2, 2, 2)  # spunet only
    backend: Literal["torch", "minkowski"] = "torch"
    norm_eps: float = 1e-3
    norm_momentum: float = 0.01  # running-statistics momentum; short CPU schedules need more (0.1)
    adapter: Literal["pdnorm", "direct", "none"] = "pdnorm"  # how the domain prompt enters
    head: Literal["language", "decoupled", "unionized"] = "language"
    context_channels: int = 256  # domain prompt size
    temperature: float = 0.07  # language-guided head
    text_encoder: Literal["minilm", "clip"] = "minilm"
    clip_weights: str = ""  # local open_clip weights file, for text_encoder = "clip"
    clip_model: str = "ViT-B-16"
    prompt_template: str = "a point of {}"


@dataclass
class DataConfig:
    # Batches per dataset in one interleaving cycle; datasets trained are those given with --data.
    ratios: dict[str, int] = field(default_factory=lambda: {"structured3d": 4, "scannet": 2, "s3dis": 1})
    batch_size: int = 2  # scenes per batch per process
    num_workers: int = 2
    grid_size: float = 0.02  # training voxel size (metres)
    point_max: int = 100000  # sphere crop at train time
    augment: bool = True


@dataclass
class TrainConfig:
    epochs: int = 100
    eval_every: int = 1  # epochs between validations (when --val is given)
    clip_grad: float = 10.0  # max gradient norm; 0 turns clipping off
    amp: bool = True  # mixed precision, CUDA only
    log_every: int = 10  # steps between metrics.jsonl lines


@dataclass
class OptimConfig:
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = True
    scheduler: Literal["onecycle", "cosine", "constant"] = "onecycle"
    pct_start: float = 0.05
    div_factor: float = 10.0
    final_div_factor: float = 1000.0
    prompt_lr_scale: float = 0.1  # learning-rate factor for prompts and PDNorm modulation


@dataclass
class EvalConfig:
    tta: bool = False
    tta_scales: tuple[float, ...] = (0.9, 1.0, 1.1)
    tta_rotations: int = 4  # rotations about z (multiples of 360/n degrees)
    tta_flip: bool = True


@dataclass
class PPTRecipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
