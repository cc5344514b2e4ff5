"""Domain prompts and the prompt adapters of Point Prompt Training (Wu et al., CVPR 2024).

Each training dataset (domain) owns a learnable context vector, its prompt. An adapter lets the
prompt steer a shared backbone:

- `PDNorm` (prompt-driven normalisation, the paper's choice) replaces every norm of the
  backbone: BatchNorm statistics decoupled per domain, then a scale and shift computed from the
  prompt. The modulation is zero-initialised, so at step 0 PDNorm is exactly decoupled BN.
- `DirectInjection` adds a linear projection of the prompt to the input features, before the
  backbone's stem (the paper's simplest baseline).
- no adapter: the backbone uses plain shared BatchNorm (or non-adaptive PDNorm) and no prompt.

The domain travels with the sparse tensor as `SparseTensor.condition` (a `DomainCondition`),
so norm layers deep inside the backbone see it without the backbone knowing about domains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from pptkit.sparse import SparseTensor


@dataclass(frozen=True)
class DomainCondition:
    """What a batch carries as `SparseTensor.condition`: its dataset and that dataset's prompt.

    Every batch comes from one dataset, so one index and one (context_channels,) prompt
    describe all its points. `prompt` is None when the model has no prompts.
    """

    dataset_index: int
    prompt: torch.Tensor | None


class DomainPrompts(nn.Module):
    """One learnable context vector per domain.

    Initialised N(0, init_std^2) with init_std=1, the default of nn.Embedding (the paper does not
    state an initialisation). A unit-scale prompt matters because the modulation layers start at
    zero: their first gradient is proportional to SiLU(prompt), which a 0.02-scale prompt would
    shrink fifty-fold.
    """

    def __init__(self, num_domains: int, context_channels: int = 256, init_std: float = 1.0):
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.weight = nn.Parameter(torch.randn(num_domains, context_channels) * init_std)

    @property
    def num_domains(self) -> int:
        return self.weight.shape[0]

    def forward(self, dataset_index: int) -> torch.Tensor:
        """The (context_channels,) prompt of one domain."""
        check_dataset_index(dataset_index, self.num_domains)
        return self.weight[dataset_index]


class PDNorm(nn.Module):
    """Prompt-driven normalisation over a SparseTensor's features.

    `decouple=True` keeps one BatchNorm (statistics and affine) per domain, selected by
    `condition.dataset_index`; `adaptive=True` then applies `x * (1 + scale) + shift` with
    (shift, scale) = Linear(SiLU(prompt)). The Linear starts at zero.
    """

    def __init__(
        self,
        num_features: int,
        num_domains: int,
        context_channels: int = 256,
        eps: float = 1e-3,
        momentum: float = 0.01,
        adaptive: bool = True,
        decouple: bool = True,
    ):
        super().__init__()
        self.num_features = num_features
        self.num_domains = num_domains
        self.adaptive = adaptive
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(num_features, eps=eps, momentum=momentum)
            for _ in range(num_domains if decouple else 1)
        )
        self.modulation: nn.Sequential | None = None
        if adaptive:
            self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(context_channels, 2 * num_features))
            nn.init.zeros_(self.modulation[1].weight)
            nn.init.zeros_(self.modulation[1].bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        condition = x.condition
        if not isinstance(condition, DomainCondition):
            raise ValueError(
                "PDNorm needs a DomainCondition as the input's condition "
                "(run the backbone through PointPromptModel)"
            )
        check_dataset_index(condition.dataset_index, self.num_domains)
        norm = self.norms[condition.dataset_index if len(self.norms) > 1 else 0]
        feats = norm(x.feats)
        if self.modulation is not None:
            if condition.prompt is None:
                raise ValueError("adaptive PDNorm needs a prompt in the DomainCondition")
            shift, scale = self.modulation(condition.prompt).chunk(2, dim=-1)
            feats = feats * (1.0 + scale) + shift
        return x.replace(feats)


def pdnorm_factory(
    num_domains: int,
    context_channels: int = 256,
    eps: float = 1e-3,
    momentum: float = 0.01,
    adaptive: bool = True,
    decouple: bool = True,
) -> Callable[[int], PDNorm]:
    """A `norm_layer` for the backbone: channels -> PDNorm with these settings."""

    def make(num_features: int) -> PDNorm:
        return PDNorm(num_features, num_domains, context_channels, eps, momentum, adaptive, decouple)

    return make


class DirectInjection(nn.Module):
    """Adds Linear(prompt) to every point's input features, before the backbone.

    Zero-initialised like PDNorm's modulation, so training starts from the prompt-free model.
    """

    def __init__(self, context_channels: int, in_channels: int):
        super().__init__()
        self.proj = nn.Linear(context_channels, in_channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, feats: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        return feats + self.proj(prompt)


def split_prompt_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(prompt-related, other) trainable parameters, for a separate learning rate.

    Prompt-related: the domain prompts, PDNorm modulation layers and DirectInjection
    projections (the paper trains these at 0.1x the base learning rate). PDNorm's per-domain
    BatchNorm affines count as ordinary parameters.
    """
    prompt_ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, (DomainPrompts, DirectInjection)):
            prompt_ids.update(id(p) for p in module.parameters())
        elif isinstance(module, PDNorm) and module.modulation is not None:
            prompt_ids.update(id(p) for p in module.modulation.parameters())
    prompt, other = [], []
    for p in model.parameters():
        if p.requires_grad:
            (prompt if id(p) in prompt_ids else other).append(p)
    return prompt, other


def check_dataset_index(dataset_index: int, num_domains: int) -> None:
    """Raise ValueError unless 0 <= dataset_index < num_domains."""
    if not 0 <= dataset_index < num_domains:
        raise ValueError(f"dataset_index {dataset_index} is outside 0..{num_domains - 1}")
