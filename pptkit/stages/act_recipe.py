"""The ACT / Point-MAE pretraining recipe: every field of `recipes/act-*.toml`, with its default.

One recipe serves the three `pptkit pretrain --stage`s. Defaults are the reference's
ShapeNet-55 runs (ACT's `act_dvae_with_pretrained_transformer.yaml` and
`pretrain_act_distill.yaml`, Point-MAE's `pretrain.yaml`): 1,024 points, 64 patches of 32,
a 12-block 384-wide student, AdamW with a 10-epoch warm-up then cosine decay, 300 epochs.
`recipes/act-tiny.toml` shrinks them for CPU demos and tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pptkit.config import bounded


@dataclass
class PatchConfig:
    """How clouds are cut into patches, shared by every stage (a distill run checks that its
    autoencoder run used the same)."""

    num_groups: int = bounded(64, ge=1)  # FPS centres per cloud (128 for 2,048 points)
    group_size: int = bounded(32, ge=1)  # nearest points per centre


@dataclass
class EncoderConfig:
    """The student point-patch Transformer (distill and mae): what `pptkit finetune` adapts."""

    embed_dim: int = bounded(384, ge=1)
    depth: int = bounded(12, ge=1)
    num_heads: int = bounded(6, ge=1)
    mlp_ratio: float = bounded(4.0, gt=0)
    qkv_bias: bool = False
    drop_path_rate: float = bounded(0.1, ge=0, le=0.99)
    pos_hidden: int = bounded(128, ge=1)  # width of the centre-position MLP
    embed_first_channels: tuple[int, int] = bounded((128, 256), ge=1)  # mini-PointNet
    embed_second_hidden: int = bounded(512, ge=1)


@dataclass
class AutoencoderConfig:
    """Stage I (`--stage autoencoder`): model, schedules and optimiser. A distill run takes these
    from its `--autoencoder` run, not from its own recipe."""

    teacher: str = "dinov2-vits14"  # dinov2-vits14 | PATH.safetensors | timm:NAME (`--teacher` sets it)
    teacher_depth: int = bounded(0, ge=0)  # use the teacher's first N blocks; 0 = all of them
    num_prompts: int = bounded(64, ge=0)  # VPT-deep prompt tokens per teacher block (0 = none)
    prompt_dropout: float = bounded(0.1, ge=0, le=0.99)
    project_equal_widths: bool = True  # linear maps into / out of the teacher even at equal widths
    encoder_dim: int = bounded(384, ge=1)  # mini-PointNet token width
    num_tokens: int = bounded(8192, ge=2)  # codebook size
    token_dim: int = bounded(384, ge=1)  # codebook entry width
    decoder_dim: int = bounded(384, ge=1)  # latent width (stage II's target width)
    graph_k: int = bounded(4, ge=1)  # neighbouring centres per graph convolution
    graph_input_channels: int = bounded(128, ge=1)
    graph_channels: tuple[int, ...] = bounded((256, 512, 512, 1024), ge=1)
    graph_norm_groups: int = bounded(4, ge=1)
    embed_first_channels: tuple[int, int] = bounded((128, 256), ge=1)
    embed_second_hidden: int = bounded(512, ge=1)
    fold_grid: int = bounded(2, ge=1)  # fine points per coarse point: fold_grid²
    fold_hidden: int = bounded(1024, ge=1)  # coarse-point MLP width
    fold_channels: int = bounded(512, ge=1)  # folding MLP width
    fold_seed_scale: float = bounded(0.05, gt=0)
    temperature_start: float = bounded(1.0, gt=0)  # Gumbel-softmax temperature, cosine-annealed
    temperature_end: float = bounded(0.0625, gt=0)
    temperature_steps: int = bounded(100_000, ge=0)
    kl_weight: float = bounded(0.1, ge=0)  # final weight of the KL-to-uniform term
    kl_delay: int = bounded(10_000, ge=0)  # steps at weight 0 before the cosine warm-up
    kl_steps: int = bounded(100_000, ge=0)  # warm-up length
    augment: bool = False  # the reference trains stage I without augmentation
    lr: float = bounded(5e-4, gt=0)
    weight_decay: float = bounded(5e-4, ge=0)
    batch_size: int = bounded(64, ge=1)  # clouds per step per process
    clip_grad: float = bounded(10.0, ge=0)  # max gradient norm; 0 turns clipping off


@dataclass
class DistillConfig:
    """Stage II (`--stage distill`): masked modelling of the stage-I latent features."""

    mask_ratio: float = bounded(0.8, gt=0, le=0.99)
    mask_type: Literal["rand", "block"] = "rand"
    decoder_depth: int = bounded(2, ge=1)
    decoder_num_heads: int = bounded(6, ge=1)
    decoder_drop_path: float = bounded(0.1, ge=0, le=0.99)
    target_codes: Literal["sample", "argmax"] = "sample"  # reference: a code sampled per patch
    augment: bool = True
    lr: float = bounded(1e-3, gt=0)
    weight_decay: float = bounded(0.05, ge=0)
    batch_size: int = bounded(128, ge=1)
    clip_grad: float = bounded(0.0, ge=0)


@dataclass
class MAEConfig:
    """The Point-MAE baseline (`--stage mae`): masked patch reconstruction."""

    mask_ratio: float = bounded(0.6, gt=0, le=0.99)
    mask_type: Literal["rand", "block"] = "rand"
    decoder_depth: int = bounded(4, ge=1)
    decoder_num_heads: int = bounded(6, ge=1)
    decoder_drop_path: float = bounded(0.1, ge=0, le=0.99)
    augment: bool = True
    lr: float = bounded(1e-3, gt=0)
    weight_decay: float = bounded(0.05, ge=0)
    batch_size: int = bounded(128, ge=1)
    clip_grad: float = bounded(0.0, ge=0)


@dataclass
class DataConfig:
    num_points: int = bounded(1024, ge=1)  # points per cloud
    sampling: Literal["random", "fps"] = "random"  # ShapeNet reference: a random subset; fps: farthest points
    num_workers: int = bounded(2, ge=0)
    scale_low: float = bounded(2 / 3, gt=0)  # augmentation: per-axis scale U(scale_low, scale_high)
    scale_high: float = bounded(1.5, gt=0)
    translate: float = bounded(0.2, ge=0)  # then a per-axis shift U(-translate, translate)
    rotate: bool = False  # also a random rotation about the up axis (off in the reference's pretraining)
    up_axis: Literal["x", "y", "z"] = "y"  # ModelNet, ShapeNet and synthetic objects are y-up


@dataclass
class TrainConfig:
    epochs: int = bounded(300, ge=1)
    warmup_epochs: float = bounded(10.0, ge=0)  # linear warm-up from warmup_lr, then cosine to min_lr
    warmup_lr: float = bounded(1e-6, ge=0)
    min_lr: float = bounded(1e-7, ge=0)
    eval_every: int = bounded(1, ge=1)  # epochs between validations (with --val)
    amp: bool = True  # mixed precision, CUDA only
    log_every: int = bounded(10, ge=1)  # steps between metrics.jsonl lines


@dataclass
class ACTRecipe:
    patches: PatchConfig = field(default_factory=PatchConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
