"""Point Prompt Training model (Wu et al., CVPR 2024): domain prompts + backbone + head.

The caller builds the backbone (a SparseUNet whose norm_layer is `pdnorm_factory(...)` for the
"pdnorm" adapter, plain BatchNorm or non-adaptive PDNorm otherwise) and the head (see heads.py);
this module looks up the batch's domain prompt, attaches it to the input as a DomainCondition
and runs the two.

Adapters:
- "pdnorm": the prompt modulates every (adaptive) PDNorm inside the backbone.
- "direct": a projection of the prompt is added to the input features before the backbone.
- "none": no prompt; the condition still carries the dataset index for decoupled norms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from pptkit.models.pdnorm import DirectInjection, DomainCondition, DomainPrompts, PDNorm

if TYPE_CHECKING:
    from pptkit.sparse import SparseTensor

Adapter = Literal["pdnorm", "direct", "none"]
ADAPTERS: tuple[str, ...] = ("pdnorm", "direct", "none")


class PointPromptModel(nn.Module):
    """forward(x, dataset_index) -> logits (N_voxels, K_dataset) over that dataset's classes.

    `in_channels` (the backbone's input feature width) is needed only by the "direct" adapter.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        num_domains: int,
        adapter: Adapter = "pdnorm",
        context_channels: int = 256,
        in_channels: int | None = None,
        prompt_init_std: float = 1.0,
    ):
        super().__init__()
        if adapter not in ADAPTERS:
            raise ValueError(f"adapter must be one of {ADAPTERS}, got {adapter!r}")
        _check_backbone_norms(backbone, adapter, num_domains)
        self.adapter = adapter
        self.num_domains = num_domains
        self.backbone = backbone
        self.head = head
        self.prompts: DomainPrompts | None = None
        self.injection: DirectInjection | None = None
        if adapter != "none":
            self.prompts = DomainPrompts(num_domains, context_channels, prompt_init_std)
        if adapter == "direct":
            if in_channels is None:
                raise ValueError('the "direct" adapter needs in_channels')
            self.injection = DirectInjection(context_channels, in_channels)

    def forward(self, x: SparseTensor, dataset_index: int) -> torch.Tensor:
        prompt = None if self.prompts is None else self.prompts(dataset_index)
        if self.injection is not None:
            x = x.replace(self.injection(x.feats, prompt))
        x = x.with_condition(DomainCondition(dataset_index, prompt))
        return self.head(self.backbone(x).feats.feats, dataset_index)


def _check_backbone_norms(backbone: nn.Module, adapter: str, num_domains: int) -> None:
    """Catch a backbone built for another adapter or another number of domains."""
    pdnorms = [m for m in backbone.modules() if isinstance(m, PDNorm)]
    for norm in pdnorms:
        if norm.num_domains != num_domains:
            raise ValueError(f"backbone PDNorm has {norm.num_domains} domains, model has {num_domains}")
    has_adaptive = any(norm.adaptive for norm in pdnorms)
    if adapter == "pdnorm" and not has_adaptive:
        raise ValueError('adapter "pdnorm" needs a backbone built with norm_layer=pdnorm_factory(...)')
    if adapter != "pdnorm" and has_adaptive:
        raise ValueError(f'adapter "{adapter}" needs a backbone without adaptive PDNorm')
