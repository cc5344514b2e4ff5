"""Categorical alignment heads of Point Prompt Training.

Every head maps per-point features to logits over the CURRENT dataset's classes, in that
dataset's label order, so the loss is a plain cross-entropy with its labels (ignore_index=-1).
They differ in how classes shared between datasets are tied:

- `DecoupledHead`: nothing shared, one classifier per dataset.
- `UnionizedHead`: one classifier over the union label space; a dataset reads its columns.
- `LanguageGuidedHead`: cosine similarity with frozen text embeddings of the union class names
  (the paper's choice); cross-entropy over them is InfoNCE with that dataset's classes as
  negatives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pptkit.models.pdnorm import check_dataset_index


class DecoupledHead(nn.Module):
    """One Linear classifier per dataset."""

    def __init__(self, in_channels: int, num_classes_per_dataset: Sequence[int]):
        super().__init__()
        self.classifiers = nn.ModuleList(nn.Linear(in_channels, k) for k in num_classes_per_dataset)

    def forward(self, feats: torch.Tensor, dataset_index: int) -> torch.Tensor:
        check_dataset_index(dataset_index, len(self.classifiers))
        return self.classifiers[dataset_index](feats)


class _UnionMapping(nn.Module):
    """Per-dataset union indices as buffers, so a checkpoint records the label space it used."""

    def __init__(self, union_size: int, dataset_to_union: Sequence[torch.Tensor]):
        super().__init__()
        for d, indices in enumerate(dataset_to_union):
            indices = torch.as_tensor(indices, dtype=torch.long)
            if indices.ndim != 1 or len(indices) == 0:
                raise ValueError(f"dataset {d}: union indices must be a non-empty 1-D tensor")
            if indices.min() < 0 or indices.max() >= union_size:
                raise ValueError(f"dataset {d}: union indices must lie in 0..{union_size - 1}")
            if len(indices.unique()) != len(indices):
                raise ValueError(f"dataset {d}: two classes map to the same union entry")
            self.register_buffer(f"dataset_{d}", indices.clone())
        self.num_datasets = len(dataset_to_union)

    def __getitem__(self, dataset_index: int) -> torch.Tensor:
        check_dataset_index(dataset_index, self.num_datasets)
        return getattr(self, f"dataset_{dataset_index}")


class UnionizedHead(nn.Module):
    """One Linear over the union label space; logits restricted to the current dataset's classes."""

    def __init__(self, in_channels: int, union_size: int, dataset_to_union: Sequence[torch.Tensor]):
        super().__init__()
        self.classifier = nn.Linear(in_channels, union_size)
        self.dataset_to_union = _UnionMapping(union_size, dataset_to_union)

    def forward(self, feats: torch.Tensor, dataset_index: int) -> torch.Tensor:
        return self.classifier(feats)[:, self.dataset_to_union[dataset_index]]


class LanguageGuidedHead(nn.Module):
    """Cosine similarity between projected point features and frozen class-name embeddings.

    logits = scale * <normalize(Linear(feats)), normalize(text[c])> for the current dataset's
    classes c. The reference uses CLIP's logit scale, 100, frozen; `learnable_scale` trains it
    (as log(scale), clamped at 100 like CLIP's). The (U, D) text embeddings are a buffer: frozen,
    and saved in the checkpoint so evaluation needs no text model.
    """

    MAX_SCALE = 100.0

    def __init__(
        self,
        in_channels: int,
        text_embeddings: torch.Tensor,
        dataset_to_union: Sequence[torch.Tensor],
        logit_scale: float = 100.0,
        learnable_scale: bool = False,
    ):
        super().__init__()
        if text_embeddings.ndim != 2:
            raise ValueError(f"text_embeddings must be (U, D), got {tuple(text_embeddings.shape)}")
        if not 0 < logit_scale <= self.MAX_SCALE:
            raise ValueError(f"logit_scale must be in (0, {self.MAX_SCALE:g}], got {logit_scale}")
        log_scale = torch.tensor(float(logit_scale)).log()
        if learnable_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.proj = nn.Linear(in_channels, text_embeddings.shape[1])
        self.register_buffer("text_embeddings", F.normalize(text_embeddings.detach().float(), dim=1))
        self.dataset_to_union = _UnionMapping(text_embeddings.shape[0], dataset_to_union)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=math.log(self.MAX_SCALE)).exp()

    def forward(self, feats: torch.Tensor, dataset_index: int) -> torch.Tensor:
        point = F.normalize(self.proj(feats), dim=1)
        text = self.text_embeddings[self.dataset_to_union[dataset_index]]
        return self.scale.to(point.dtype) * (point @ text.to(point.dtype).T)
