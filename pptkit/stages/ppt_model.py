"""Build the Point Prompt Training model from a recipe (shared by joint-train and eval)."""

from __future__ import annotations

from functools import partial

import torch

from pptkit.engine.batch import FEATURE_CHANNELS
from pptkit.models.heads import DecoupledHead, LanguageGuidedHead, UnionizedHead
from pptkit.models.label_space import UnionLabelSpace
from pptkit.models.pdnorm import pdnorm_factory
from pptkit.models.ppt import PointPromptModel
from pptkit.models.sparse_unet import MinkUNet14, MinkUNet18, MinkUNet34, SparseUNet
from pptkit.models.text import ClipTextEncoder, MiniLMTextEncoder, encode_class_names
from pptkit.sparse import BatchNorm
from pptkit.stages.ppt_recipe import ModelConfig

MINKUNETS = {"minkunet14": MinkUNet14, "minkunet18": MinkUNet18, "minkunet34": MinkUNet34}


def text_embeddings(cfg: ModelConfig, class_names: list[str]) -> torch.Tensor:
    """Frozen embeddings (U, D) of the union class names, from the configured text encoder."""
    if cfg.text_encoder == "clip":
        encoder = ClipTextEncoder(cfg.clip_weights, cfg.clip_model)
    else:
        encoder = MiniLMTextEncoder()
    return encode_class_names(encoder, class_names, cfg.prompt_template)


def build_model(cfg: ModelConfig, labels: UnionLabelSpace, datasets: list[str],
                text: torch.Tensor | None) -> PointPromptModel:
    """Backbone (with PDNorm when adapter = pdnorm) + categorical alignment head + prompts.

    `text` is required for the language-guided head; at evaluation time pass zeros of the
    checkpoint's shape: the real embeddings come back with the state dict.
    """
    num_domains = len(datasets)
    if cfg.adapter == "pdnorm":
        norm = pdnorm_factory(num_domains, cfg.context_channels, eps=cfg.norm_eps, momentum=cfg.norm_momentum)
    else:
        norm = partial(BatchNorm, eps=cfg.norm_eps, momentum=cfg.norm_momentum)
    if cfg.backbone == "spunet":
        backbone = SparseUNet(FEATURE_CHANNELS, 0, base_channels=cfg.base_channels,
                              channels=cfg.channels, layers=cfg.layers, norm_layer=norm,
                              backend=cfg.backend, conv_init=cfg.conv_init)
    else:
        backbone = MINKUNETS[cfg.backbone](FEATURE_CHANNELS, 0, norm_layer=norm, backend=cfg.backend,
                                           conv_init=cfg.conv_init)
    mappings = labels.mappings(datasets)
    if cfg.head == "language":
        head = LanguageGuidedHead(backbone.out_channels, text, mappings, cfg.logit_scale, cfg.learnable_logit_scale)
    elif cfg.head == "unionized":
        head = UnionizedHead(backbone.out_channels, len(labels), mappings)
    else:
        head = DecoupledHead(backbone.out_channels, [len(labels.class_names[d]) for d in datasets])
    return PointPromptModel(backbone, head, num_domains, adapter=cfg.adapter,
                            context_channels=cfg.context_channels, in_channels=FEATURE_CHANNELS)
