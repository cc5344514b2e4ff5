"""The fine-tuning recipe of `pptkit finetune`: every field of `recipes/gst-*.toml`, with its default.

Defaults are PointGST's ModelNet40 run on a Point-MAE / ACT backbone (the released
`cfgs/{mae,act}/finetune_modelnet_pgst.yaml`, which match Point-MAE's own full fine-tuning
recipe): 1,024 points in 64 patches of 32, AdamW (lr 5e-4, weight decay 0.05), a 10-epoch
warm-up from 1e-6 then cosine decay to 1e-6 over 300 epochs, batch 32, gradient clipping at
10, drop-path 0.1, adapters of rank 36. The backbone's architecture (width, depth, heads) comes
from the pretrain checkpoint; patches, drop-path and everything else from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pptkit.config import bounded

Mode = Literal["gst", "full", "linear"]


@dataclass
class AdapterConfig:
    """PointGST's Point Cloud Spectral Adapters (`pptkit.models.spectral_adapter`), gst mode only."""

    rank: int = bounded(36, ge=1)
    scale: float = bounded(1.0, gt=0)
    dropout: float = bounded(0.0, ge=0, le=0.99)
    local_size: int = bounded(32, ge=1)  # centres per local graph (Morton-order chunks); the released configs use 4
    laplacian: Literal["normalized", "combinatorial"] = "normalized"  # the paper's; the released code: combinatorial
    min_distance: Literal["distinct", "reference"] = "distinct"  # reference: batch-wide, float error on the diagonal
    transform: Literal["math", "reference"] = "math"  # reference: U·x forward where the math says Uᵀ·x
    morton_bits: int = bounded(10, ge=1, le=21)


@dataclass
class HeadConfig:
    hidden: tuple[int, ...] = bounded((256, 256), ge=1)  # Linear -> BatchNorm -> ReLU -> Dropout per width
    dropout: float = bounded(0.5, ge=0, le=0.99)


@dataclass
class ModelConfig:
    mode: Mode = "gst"  # gst: adapters + head; full: everything; linear: the head only (--mode sets it)
    train_cls_tokens: bool = True  # gst: also train the cls token and its position, as the reference does
    drop_path_rate: float = bounded(0.1, ge=0, le=0.99)  # the encoder's, for fine-tuning
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass
class PatchConfig:
    """How clouds are cut into patches; the encoder's weights do not depend on it (the
    reference fine-tunes 2,048-point ScanObjectNN with 128 patches of a 64-patch backbone)."""

    num_groups: int = bounded(64, ge=1)
    group_size: int = bounded(32, ge=1)


@dataclass
class DataConfig:
    num_points: int = bounded(1024, ge=1)  # points per object
    # Training (and each voting view) takes the farthest `fps_pool` points, then a random
    # `num_points` of them, as the reference (1,200 for 1,024; 2,400 for 2,048); 0 = exactly
    # the farthest `num_points`, as validation always does.
    fps_pool: int = bounded(1200, ge=0)
    augment: Literal["scale_translate", "rotate", "none"] = "scale_translate"  # ModelNet40; ScanObjectNN: rotate
    scale_low: float = bounded(2 / 3, gt=0)  # scale_translate: per-axis scale U(scale_low, scale_high),
    scale_high: float = bounded(1.5, gt=0)
    translate: float = bounded(0.2, ge=0)  # then a per-axis shift U(-translate, translate)
    up_axis: Literal["x", "y", "z"] = "y"  # rotate: about this axis (ModelNet, ScanObjectNN and synth objects: y)
    num_workers: int = bounded(2, ge=0)


@dataclass
class TrainConfig:
    epochs: int = bounded(300, ge=1)
    batch_size: int = bounded(32, ge=1)  # objects per step per process
    warmup_epochs: float = bounded(10.0, ge=0)  # linear warm-up from warmup_lr, then cosine to min_lr
    warmup_lr: float = bounded(1e-6, ge=0)
    min_lr: float = bounded(1e-6, ge=0)
    clip_grad: float = bounded(10.0, ge=0)  # max gradient norm; 0 turns clipping off
    eval_every: int = bounded(1, ge=1)  # epochs between validations (with --data val=...)
    amp: bool = True  # mixed precision, CUDA only
    log_every: int = bounded(10, ge=1)  # steps between metrics.jsonl lines


@dataclass
class OptimConfig:
    """AdamW; biases, 1-D tensors (norms) and tokens take no weight decay."""

    lr: float = bounded(5e-4, gt=0)
    weight_decay: float = bounded(0.05, ge=0)


@dataclass
class FinetuneRecipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
