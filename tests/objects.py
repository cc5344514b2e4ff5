"""Tiny object and scene stores built through the real path (`synth` -> readers -> `preprocess`),
and a tiny image teacher saved as a `--teacher` safetensors file, for the point-patch stages."""

from __future__ import annotations

from pathlib import Path

import torch

from pptkit.models.teacher_weights import save_teacher_weights
from pptkit.models.vit_teacher import ViTConfig, VisionTransformer
from pptkit.stages.preprocess import PreprocessOptions, run_preprocess
from pptkit.stages.synth import run_synth

# Small enough that a teacher block costs next to nothing; same architecture family as DINOv2.
TINY_TEACHER = ViTConfig(embed_dim=32, depth=2, num_heads=2, mlp_hidden_dim=64, patch_size=4, pos_grid=2)


def object_stores(root: Path, per_class: int = 2) -> dict[str, Path]:
    """{"train": h5, "test": h5} of synthetic ModelNet-style objects (18 classes; with 2 per class
    18 train and 18 test objects of 8,192 stored points)."""
    raw = run_synth(style="objects", out=root / "raw_objects", scenes=per_class, seed=0, overwrite=False)
    stores = {}
    for split in ("train", "test"):
        stores[split] = root / f"objects_{split}.h5"
        run_preprocess(PreprocessOptions(dataset="modelnet40", input=raw, output=stores[split], split=split))
    return stores


def scene_store(root: Path) -> Path:
    """A store of two synthetic ScanNet-style rooms at 5 cm voxels."""
    raw = run_synth(style="scannet", out=root / "raw_scenes", scenes=2, seed=0, overwrite=False)
    out = root / "scenes.h5"
    run_preprocess(PreprocessOptions(dataset="scannet", input=raw, output=out, split="train", grid_size=0.05))
    return out


def teacher_file(path: Path, seed: int = 0) -> Path:
    """A randomly initialised tiny ViT saved in pptkit's teacher safetensors layout."""
    torch.manual_seed(seed)
    model = VisionTransformer(TINY_TEACHER)
    save_teacher_weights(path, model.state_dict(), TINY_TEACHER)
    return path
