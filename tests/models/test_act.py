"""ACT models: schedules, losses on hand-made inputs, masks, the frozen teacher and stage-I model,
and the shapes and wiring of the autoencoder, the distillation student and Point-MAE."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pptkit.models import act
from pptkit.models.act import (
    ACTAutoencoder,
    ACTDistillation,
    FoldingDecoder,
    GraphConv,
    PointMAE,
    autoencoder_losses,
    block_mask,
    cosine_loss,
    cosine_schedule,
    kl_to_uniform,
    patch_chamfer,
    random_mask,
    split_by_mask,
)
from pptkit.models.point_transformer import PointTransformerEncoder
from pptkit.models.vit_teacher import ViTConfig, VisionTransformer
from pptkit.stages.pretrain import parameter_groups

TEACHER = ViTConfig(embed_dim=32, depth=2, num_heads=2, mlp_hidden_dim=64, patch_size=4, pos_grid=2)
GROUPS, SIZE = 8, 8


def tiny_autoencoder(seed: int = 0) -> ACTAutoencoder:
    torch.manual_seed(seed)
    return ACTAutoencoder(
        VisionTransformer(TEACHER).eval(), num_groups=GROUPS, group_size=SIZE, encoder_dim=32, num_tokens=16,
        token_dim=24, decoder_dim=20, graph_input_channels=16, graph_channels=(16, 16), num_prompts=4,
        fold_hidden=32, fold_channels=16, embed_first_channels=(16, 32), embed_second_hidden=32)


def tiny_encoder() -> PointTransformerEncoder:
    return PointTransformerEncoder(embed_dim=32, depth=1, num_heads=2, num_groups=GROUPS, group_size=SIZE,
                                   embed_first_channels=(16, 32), embed_second_hidden=32)


def clouds(batch: int = 3, points: int = 96, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, points, 3, generator=torch.Generator().manual_seed(seed))


# --- schedules and losses ---------------------------------------------------------------------


def test_gumbel_temperature_schedule_of_the_reference():
    def temperature(step):
        return cosine_schedule(step, 1.0, 0.0625, 100_000)
    assert temperature(0) == 1.0
    assert temperature(50_000) == pytest.approx((1.0 + 0.0625) / 2)
    assert temperature(25_000) == pytest.approx(0.0625 + 0.9375 * (1 + math.cos(math.pi / 4)) / 2)
    assert temperature(100_000) == temperature(10**7) == 0.0625


def test_kl_weight_warms_up_after_a_delay():
    def weight(step):
        return cosine_schedule(step, 0.0, 0.1, 100_000, delay=10_000)
    assert weight(0) == weight(10_000) == 0.0
    assert weight(60_000) == pytest.approx(0.05)
    assert weight(110_000) == weight(500_000) == 0.1
    assert all(weight(s) <= weight(s + 1000) for s in range(0, 120_000, 1000))


def test_kl_to_uniform_on_hand_made_distributions():
    uniform = torch.zeros(2, 5, 4)  # every patch's softmax is uniform
    assert kl_to_uniform(uniform).item() == pytest.approx(0.0, abs=1e-7)
    # One patch per cloud with code distribution q: KL(U || q) = sum 1/4 (log 1/4 - log q).
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])
    expected = float((0.25 * (math.log(0.25) - q.log())).sum())
    assert kl_to_uniform(q.log().view(1, 1, 4)).item() == pytest.approx(expected, rel=1e-6)
    # Two patches that each use one code, together two of four codes evenly: q = (1/2, 1/2, 0, 0)
    # but softmax never reaches 0; with logits +-30 the mean is 1/2 on two codes.
    two = torch.full((1, 2, 4), -30.0)
    two[0, 0, 0] = two[0, 1, 1] = 30.0
    value = kl_to_uniform(two).item()
    assert value > 10 and math.isfinite(value)  # the unused codes cost ~ (60 + log 2) / 2


def test_kl_to_uniform_equals_the_reference_formula():
    logits = torch.randn(3, 6, 10, generator=torch.Generator().manual_seed(0))
    log_q = torch.log(F.softmax(logits, dim=-1).mean(dim=1))
    log_uniform = torch.log(torch.tensor([1.0 / 10])).expand_as(log_q)
    reference = F.kl_div(log_q, log_uniform, None, None, "batchmean", log_target=True)
    assert kl_to_uniform(logits).item() == pytest.approx(reference.item(), rel=1e-5)


def test_cosine_loss_on_hand_made_vectors():
    a = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    assert cosine_loss(a, 3 * a).item() == pytest.approx(0.0, abs=1e-7)
    assert cosine_loss(a, -a).item() == pytest.approx(2.0)
    assert cosine_loss(a, a.flip(-1)).item() == pytest.approx(1.0)  # orthogonal
    mixed = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]), torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    assert cosine_loss(*mixed).item() == pytest.approx(0.5)  # mean of 0 and 1


def test_patch_chamfer_on_shifted_patches():
    grid = torch.stack(torch.meshgrid(torch.arange(3.0), torch.arange(3.0), indexing="ij"), -1).reshape(1, 1, 9, 2)
    patch = torch.cat([grid, torch.zeros(1, 1, 9, 1)], dim=-1).expand(2, 3, 9, 3)
    shifted = patch + torch.tensor([0.0, 0.0, 0.1])
    assert patch_chamfer(patch, patch, "l2").item() == 0.0
    assert patch_chamfer(shifted, patch, "l2").item() == pytest.approx(2 * 0.01, rel=1e-5)
    assert patch_chamfer(shifted, patch, "l1").item() == pytest.approx(0.1, rel=1e-5)


# --- masks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio, groups", [(0.8, 64), (0.6, 64), (0.6, 10), (0.5, 7)])
def test_random_mask_counts_and_independence(ratio, groups):
    torch.manual_seed(0)
    mask = random_mask(16, groups, ratio)
    assert mask.dtype == torch.bool and mask.shape == (16, groups)
    assert (mask.sum(dim=1) == int(ratio * groups)).all()
    assert len({tuple(row.tolist()) for row in mask}) > 1  # drawn per cloud
    torch.manual_seed(0)
    assert torch.equal(random_mask(16, groups, ratio), mask)  # from torch's global generator


def test_block_mask_is_a_contiguous_region():
    torch.manual_seed(0)
    centres = torch.zeros(5, 20, 3)
    centres[..., 0] = torch.arange(20.0)  # centres on a line: a region is a run of indices
    mask = block_mask(centres, 0.6)
    assert (mask.sum(dim=1) == 12).all()
    for row in mask:
        masked = row.nonzero().flatten()
        assert masked.max() - masked.min() == 11


def test_split_by_mask_is_disjoint_and_keeps_order():
    torch.manual_seed(0)
    mask = random_mask(4, 10, 0.7)
    ids = torch.arange(10).expand(4, 10).unsqueeze(-1)
    visible, masked = split_by_mask(ids, mask)
    assert visible.shape == (4, 3, 1) and masked.shape == (4, 7, 1)
    for b in range(4):
        v, m = set(visible[b, :, 0].tolist()), set(masked[b, :, 0].tolist())
        assert not v & m and v | m == set(range(10))
        assert visible[b, :, 0].tolist() == sorted(v) and masked[b, :, 0].tolist() == sorted(m)
        assert m == set(mask[b].nonzero().flatten().tolist())


# --- stage I ----------------------------------------------------------------------------------


def test_graph_conv_follows_a_permutation_of_the_patches():
    torch.manual_seed(0)
    conv = GraphConv(8, 12, k=3, input_channels=8, channels=(8, 8), norm_groups=4).eval()
    features, centres = torch.randn(2, 10, 8), torch.randn(2, 10, 3)
    perm = torch.randperm(10)
    out = conv(features, centres)
    assert out.shape == (2, 10, 12)
    assert torch.allclose(conv(features[:, perm], centres[:, perm]), out[:, perm], atol=1e-5)


def test_folding_decoder_folds_each_coarse_point_into_a_square():
    torch.manual_seed(0)
    decoder = FoldingDecoder(6, num_fine=8, grid=2, hidden=16, fold_channels=8).eval()
    coarse, fine = decoder(torch.randn(2, 3, 6))
    assert coarse.shape == (2, 3, 2, 3) and fine.shape == (2, 3, 8, 3)
    last = decoder.final_conv[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    coarse, fine = decoder(torch.randn(2, 3, 6))
    assert torch.equal(fine, coarse.repeat_interleave(4, dim=2))  # offsets 0: each coarse point 4 times


def test_autoencoder_shapes_and_losses():
    model = tiny_autoencoder()
    out = model(clouds(), temperature=1.0)
    assert out.patches.shape == (3, GROUPS, SIZE, 3) and out.centres.shape == (3, GROUPS, 3)
    assert out.logits.shape == (3, GROUPS, 16)
    assert out.coarse.shape == (3, GROUPS, SIZE // 4, 3) and out.fine.shape == (3, GROUPS, SIZE, 3)
    reconstruction, kl = autoencoder_losses(out)
    assert reconstruction.item() > 0 and kl.item() >= 0


def test_frozen_teacher_is_unchanged_by_training_steps():
    model = tiny_autoencoder()
    frozen = {name: p.detach().clone() for name, p in model.named_parameters()
              if name.startswith(("teacher.blocks.", "teacher.norm."))}
    assert frozen and not any(p.requires_grad for n, p in model.named_parameters() if n in frozen)
    trainable = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay=0.05), lr=1e-2)
    model.train()
    for step in range(3):
        reconstruction, kl = autoencoder_losses(model(clouds(seed=step), temperature=1.0 - 0.3 * step))
        optimizer.zero_grad()
        (reconstruction + 0.1 * kl).backward()
        optimizer.step()
    params = dict(model.named_parameters())
    for name, before in frozen.items():
        assert params[name].grad is None, name
        assert torch.equal(params[name], before), name
    assert not model.teacher.blocks.training and not model.teacher.norm.training
    for name in ("codebook", "teacher.prompts", "teacher.proj_in.weight", "decoder.mlp.0.weight", "embed.first_conv.0.weight"):
        assert not torch.equal(params[name], trainable[name]), name


def test_autoencoder_state_dict_leaves_the_teacher_out_and_loads_back():
    model = tiny_autoencoder(seed=0)
    state = model.state_dict()
    assert not any(k.startswith(("teacher.blocks.", "teacher.norm.")) for k in state)
    assert "teacher.prompts" in state and "codebook" in state
    other = tiny_autoencoder(seed=1)  # same teacher weights (seed 0 below), other trained parts
    other.teacher.blocks.load_state_dict(model.teacher.blocks.state_dict())
    other.teacher.norm.load_state_dict(model.teacher.norm.state_dict())
    result = other.load_state_dict(state)  # strict: the teacher's keys may be missing, nothing else
    assert not result.missing_keys and not result.unexpected_keys
    model.eval(), other.eval()
    torch.manual_seed(5)
    a = model(clouds(), 0.5).fine
    torch.manual_seed(5)
    assert torch.equal(other(clouds(), 0.5).fine, a)
    with pytest.raises(RuntimeError, match="codebook"):
        other.load_state_dict({k: v for k, v in state.items() if k != "codebook"})


def test_latent_codes_argmax_is_deterministic_and_sampling_is_not():
    model = tiny_autoencoder().eval()
    patches, centres = model.group(clouds())
    with torch.no_grad():
        torch.manual_seed(0)
        a = model.latent(patches, centres, "argmax")
        torch.manual_seed(1)
        assert torch.equal(model.latent(patches, centres, "argmax"), a)
        sampled = [model.latent(patches, centres, "sample") for _ in range(2)]
    assert a.shape == (3, GROUPS, 20)
    assert not torch.equal(sampled[0], sampled[1])


# --- stage II and Point-MAE -----------------------------------------------------------------


def test_distillation_student_sees_only_visible_patches(monkeypatch):
    model = ACTDistillation(tiny_encoder(), tiny_autoencoder(), mask_ratio=0.75, decoder_depth=1, decoder_num_heads=2)
    seen, masks = {}, []
    real_draw, real_tokens = act.draw_mask, model.encoder.forward_tokens

    def record_mask(*args):
        masks.append(real_draw(*args))
        return masks[-1]

    def record_tokens(tokens, centres, **kwargs):
        seen["centres"] = centres
        return real_tokens(tokens, centres, **kwargs)

    monkeypatch.setattr(act, "draw_mask", record_mask)
    monkeypatch.setattr(model.encoder, "forward_tokens", record_tokens)
    points = clouds()
    prediction, target = model(points)
    assert prediction.shape == target.shape == (3, 6, 20)  # floor(0.75 * 8) masked, 20-wide latents
    _, centres = model.encoder.group(points)
    visible, _ = split_by_mask(centres, masks[0])
    assert torch.equal(seen["centres"], visible) and seen["centres"].shape == (3, 2, 3)


def test_distillation_target_is_frozen_and_the_latent_at_masked_patches(monkeypatch):
    target = tiny_autoencoder()
    model = ACTDistillation(tiny_encoder(), target, decoder_depth=1, decoder_num_heads=2, target_codes="argmax")
    model.train()
    assert not target.training and not any(p.requires_grad for p in target.parameters())
    buffers = {k: v.clone() for k, v in target.state_dict(keep_vars=False).items() if "running" in k}
    masks = []
    real_draw = act.draw_mask
    monkeypatch.setattr(act, "draw_mask", lambda *a: masks.append(real_draw(*a)) or masks[-1])
    points = clouds()
    prediction, targets = model(points)
    cosine_loss(prediction, targets).backward()
    assert all(p.grad is None for p in target.parameters())
    assert all(torch.equal(target.state_dict()[k], v) for k, v in buffers.items())  # BatchNorm untouched
    with torch.no_grad():
        patches, centres = target.group(points)
        expected = split_by_mask(target.latent(patches, centres, "argmax"), masks[0])[1]
    assert torch.allclose(targets, expected)
    assert not any(k.startswith("target.") for k in model.state_dict())
    assert model.encoder.cls_token.grad is not None  # ACT's student carries its cls token


def test_distillation_refuses_other_patches():
    encoder = PointTransformerEncoder(embed_dim=32, depth=1, num_heads=2, num_groups=4, group_size=SIZE)
    with pytest.raises(ValueError, match="patches"):
        ACTDistillation(encoder, tiny_autoencoder())


def test_point_mae_predicts_the_masked_patches(monkeypatch):
    torch.manual_seed(0)
    model = PointMAE(tiny_encoder(), mask_ratio=0.6, decoder_depth=1, decoder_num_heads=2)
    masks = []
    real_draw = act.draw_mask
    monkeypatch.setattr(act, "draw_mask", lambda *a: masks.append(real_draw(*a)) or masks[-1])
    points = clouds()
    prediction, target = model(points)
    assert prediction.shape == target.shape == (3, 4, SIZE, 3)
    patches, _ = model.encoder.group(points)
    assert torch.equal(target, split_by_mask(patches, masks[0])[1])
    patch_chamfer(prediction, target, "l2").backward()
    assert model.encoder.cls_token.grad is None  # Point-MAE's pretraining encoder has no cls token
    assert model.head.weight.grad is not None


def test_mask_ratio_must_leave_patches_on_both_sides():
    with pytest.raises(ValueError, match="at least one"):
        PointMAE(tiny_encoder(), mask_ratio=0.1)  # floor(0.8) = 0 masked
