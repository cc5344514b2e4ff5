"""PDNorm, domain prompts, direct injection, prompt parameter groups and PointPromptModel."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from pptkit.models.heads import DecoupledHead
from pptkit.models.pdnorm import (
    DirectInjection,
    DomainCondition,
    DomainPrompts,
    PDNorm,
    pdnorm_factory,
    split_prompt_parameters,
)
from pptkit.models.ppt import PointPromptModel
from pptkit.sparse import BatchNorm, SparseTensor


def sparse(feats: torch.Tensor, dataset_index: int | None = None, prompt: torch.Tensor | None = None) -> SparseTensor:
    """One-batch SparseTensor on distinct voxels, carrying a DomainCondition when given an index."""
    coords = torch.zeros(feats.shape[0], 4, dtype=torch.int32)
    coords[:, 1] = torch.arange(feats.shape[0])
    condition = None if dataset_index is None else DomainCondition(dataset_index, prompt)
    return SparseTensor(feats, coords, condition=condition)


def test_zero_init_pdnorm_is_exactly_decoupled_batchnorm_per_domain():
    torch.manual_seed(0)
    norm = PDNorm(8, num_domains=3, context_channels=16)
    reference = [nn.BatchNorm1d(8, eps=1e-3, momentum=0.01) for _ in range(3)]
    prompts = torch.randn(3, 16)
    for step in range(3):
        for domain, shift in ((0, 5.0), (2, -3.0)):
            x = torch.randn(50, 8) * (domain + 1) + shift
            out = norm(sparse(x, domain, prompts[domain])).feats
            assert torch.equal(out, reference[domain](x)), (step, domain)
    for domain in range(3):
        assert torch.equal(norm.norms[domain].running_mean, reference[domain].running_mean)
        assert torch.equal(norm.norms[domain].running_var, reference[domain].running_var)
    # Domain 1 never trained: its statistics are still the initial ones.
    assert torch.equal(norm.norms[1].running_mean, torch.zeros(8))
    assert torch.equal(norm.norms[1].running_var, torch.ones(8))
    assert norm.norms[1].num_batches_tracked.item() == 0
    assert norm.norms[0].num_batches_tracked.item() == 3


def test_eval_uses_the_domains_own_statistics():
    torch.manual_seed(0)
    norm = PDNorm(4, num_domains=2, context_channels=8, momentum=0.5)
    prompt = torch.randn(8)
    for _ in range(10):
        norm(sparse(torch.randn(100, 4) + 10.0, 0, prompt))
    norm.eval()
    x = torch.full((5, 4), 10.0)
    assert norm(sparse(x, 0, prompt)).feats.abs().max() < 1.0  # centred by domain 0's mean
    assert norm(sparse(x, 1, prompt)).feats.min() > 9.0  # domain 1 still has mean 0, var 1


def test_one_optimiser_step_makes_the_modulation_nonzero():
    torch.manual_seed(0)
    prompts = DomainPrompts(2, context_channels=16)
    norm = PDNorm(8, num_domains=2, context_channels=16)
    optimiser = torch.optim.SGD([*prompts.parameters(), *norm.parameters()], lr=0.1)
    x, target = torch.randn(32, 8), torch.randn(32, 8)
    loss = ((norm(sparse(x, 1, prompts(1))).feats - target) ** 2).mean()
    loss.backward()
    assert prompts.weight.grad.abs().max() == 0  # zero Linear: no gradient reaches the prompt yet
    optimiser.step()
    linear = norm.modulation[1]
    assert linear.weight.abs().max() > 0 and linear.bias.abs().max() > 0
    norm.eval()
    plain = norm.norms[1](x)
    assert not torch.allclose(norm(sparse(x, 1, prompts(1))).feats, plain)


def test_non_adaptive_and_shared_variants_and_errors():
    x = torch.randn(10, 4)
    decoupled_only = PDNorm(4, num_domains=2, adaptive=False)
    assert decoupled_only.modulation is None
    decoupled_only(sparse(x, 1, None))
    assert decoupled_only.norms[0].num_batches_tracked.item() == 0
    shared = PDNorm(4, num_domains=2, context_channels=8, decouple=False)
    assert len(shared.norms) == 1
    shared(sparse(x, 1, torch.randn(8)))
    assert shared.norms[0].num_batches_tracked.item() == 1
    with pytest.raises(ValueError, match="needs a prompt"):
        PDNorm(4, 2, context_channels=8)(sparse(x, 0, None))
    with pytest.raises(ValueError, match="DomainCondition"):
        PDNorm(4, 2, context_channels=8)(sparse(x))
    with pytest.raises(ValueError, match="outside 0..1"):
        PDNorm(4, 2, context_channels=8)(sparse(x, 2, torch.randn(8)))


def test_factory_and_prompts():
    make = pdnorm_factory(num_domains=3, context_channels=32, eps=1e-5, momentum=0.1)
    norm = make(24)
    assert isinstance(norm, PDNorm) and norm.num_features == 24 and len(norm.norms) == 3
    assert norm.norms[0].eps == 1e-5 and norm.norms[0].momentum == 0.1
    assert norm.modulation[1].in_features == 32 and norm.modulation[1].out_features == 48
    torch.manual_seed(0)
    prompts = DomainPrompts(4, context_channels=256)
    assert prompts(3).shape == (256,)
    assert 0.9 < prompts.weight.std().item() < 1.1
    assert 0.015 < DomainPrompts(4, 256, init_std=0.02).weight.std().item() < 0.025
    with pytest.raises(ValueError, match="outside"):
        prompts(4)


def test_direct_injection_starts_as_identity():
    inject = DirectInjection(context_channels=8, in_channels=6)
    feats = torch.randn(20, 6)
    assert torch.equal(inject(feats, torch.randn(8)), feats)


class TinyBackbone(nn.Module):
    """Linear + one norm from norm_layer, returning the UNetOutput shape (feats, logits)."""

    def __init__(self, in_channels: int, channels: int, norm_layer):
        super().__init__()
        self.linear = nn.Linear(in_channels, channels)
        self.norm = norm_layer(channels)

    def forward(self, x: SparseTensor) -> SimpleNamespace:
        return SimpleNamespace(feats=self.norm(x.replace(self.linear(x.feats))), logits=None)


def make_model(adapter: str, norm_layer) -> PointPromptModel:
    torch.manual_seed(0)
    backbone = TinyBackbone(6, 16, norm_layer)
    head = DecoupledHead(16, [5, 3])
    return PointPromptModel(backbone, head, num_domains=2, adapter=adapter, context_channels=8, in_channels=6)


def test_model_forward_gives_logits_over_the_current_dataset():
    x = sparse(torch.randn(30, 6))
    for adapter, norm_layer in (
        ("pdnorm", pdnorm_factory(2, context_channels=8)),
        ("direct", BatchNorm),
        ("none", pdnorm_factory(2, adaptive=False)),
    ):
        model = make_model(adapter, norm_layer)
        assert model(x, 0).shape == (30, 5) and model(x, 1).shape == (30, 3)
        assert (model.prompts is None) == (adapter == "none")
        assert (model.injection is not None) == (adapter == "direct")


def test_model_passes_the_prompt_of_the_batch_dataset_to_the_norms():
    model = make_model("pdnorm", pdnorm_factory(2, context_channels=8))
    seen: list[DomainCondition] = []
    model.backbone.norm.register_forward_hook(lambda m, args, out: seen.append(args[0].condition))
    model(sparse(torch.randn(10, 6)), 1)
    assert seen[0].dataset_index == 1 and torch.equal(seen[0].prompt, model.prompts(1))


def test_model_rejects_a_backbone_built_for_another_adapter():
    with pytest.raises(ValueError, match="pdnorm_factory"):
        make_model("pdnorm", BatchNorm)
    with pytest.raises(ValueError, match="without adaptive PDNorm"):
        make_model("none", pdnorm_factory(2, context_channels=8))
    with pytest.raises(ValueError, match="3 domains"):
        make_model("pdnorm", pdnorm_factory(3, context_channels=8))
    with pytest.raises(ValueError, match="in_channels"):
        PointPromptModel(TinyBackbone(6, 16, BatchNorm), DecoupledHead(16, [2]), 1, adapter="direct")
    with pytest.raises(ValueError, match="adapter must be"):
        PointPromptModel(TinyBackbone(6, 16, BatchNorm), DecoupledHead(16, [2]), 1, adapter="add")


@pytest.mark.parametrize("adapter", ["pdnorm", "direct"])
def test_split_prompt_parameters(adapter):
    norm_layer = pdnorm_factory(2, context_channels=8) if adapter == "pdnorm" else BatchNorm
    model = make_model(adapter, norm_layer)
    prompt, other = split_prompt_parameters(model)
    expected = [model.prompts.weight]
    if adapter == "pdnorm":
        expected += list(model.backbone.norm.modulation.parameters())
    else:
        expected += list(model.injection.parameters())
    assert {id(p) for p in prompt} == {id(p) for p in expected}
    assert {id(p) for p in prompt}.isdisjoint(id(p) for p in other)
    assert len(prompt) + len(other) == len(list(model.parameters()))
    frozen = copy.deepcopy(model)
    frozen.prompts.weight.requires_grad_(False)
    assert len(split_prompt_parameters(frozen)[0]) == len(expected) - 1


def test_condition_reaches_every_norm_of_a_real_sparse_unet():
    from pptkit.models.sparse_unet import SparseUNet

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    xyz = torch.randperm(40**3, generator=generator)[:120]  # spread enough to keep >1 voxel at stride 16
    coords = torch.stack([torch.zeros_like(xyz), xyz // 1600, xyz // 40 % 40, xyz % 40], dim=1).int()
    x = SparseTensor(torch.randn(120, 6, generator=generator), coords)
    backbone = SparseUNet(6, 0, base_channels=4, channels=(4, 4, 8, 8, 8, 8, 4, 4), layers=(1,) * 8,
                          norm_layer=pdnorm_factory(2, context_channels=8))
    model = PointPromptModel(backbone, DecoupledHead(4, [5, 3]), num_domains=2, context_channels=8)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    logits = model(x, 1)
    assert logits.shape == (120, 3)
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 3, (120,), generator=generator)).backward()
    optimiser.step()
    norms = [m for m in model.modules() if isinstance(m, PDNorm)]
    assert len(norms) > 20
    assert all(n.norms[1].num_batches_tracked.item() == 1 for n in norms)
    assert all(n.norms[0].num_batches_tracked.item() == 0 for n in norms)
    assert all(n.modulation[1].weight.abs().max() > 0 for n in norms)
