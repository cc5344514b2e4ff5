"""The point-patch Transformer: shapes, determinism, eval-mode drop-path, the side-branch hook,
the documented key layout, the reference checkpoint mapping, and a hand-written reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pptkit.models.point_ops import group_patches
from pptkit.models.point_transformer import (
    Block,
    PointTransformerEncoder,
    cls_max_pool,
    convert_reference_state_dict,
)

SMALL = dict(embed_dim=48, depth=3, num_heads=4, num_groups=16, group_size=8, pos_hidden=16,
             embed_first_channels=(16, 32), embed_second_hidden=64)


def small_encoder(seed: int = 0, **overrides) -> PointTransformerEncoder:
    torch.manual_seed(seed)
    return PointTransformerEncoder(**{**SMALL, **overrides})


def clouds(batch: int = 2, points: int = 128, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, points, 3, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def documented_keys(depth: int, qkv_bias: bool = False) -> set[str]:
    """The layout of the module docstring, written out."""
    keys = {"cls_token", "cls_pos", "norm.weight", "norm.bias"}
    for conv in ("first_conv", "second_conv"):
        for layer in (0, 3):
            keys |= {f"patch_embed.{conv}.{layer}.weight", f"patch_embed.{conv}.{layer}.bias"}
        keys |= {f"patch_embed.{conv}.1.{n}" for n in
                 ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    keys |= {f"pos_embed.{layer}.{n}" for layer in (0, 2) for n in ("weight", "bias")}
    for i in range(depth):
        keys |= {f"blocks.{i}.attn.qkv.weight"} | ({f"blocks.{i}.attn.qkv.bias"} if qkv_bias else set())
        for part in ("norm1", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"}
    return keys


def test_state_dict_matches_documented_layout_and_shapes():
    model = PointTransformerEncoder()  # paper scale
    state = model.state_dict()
    assert set(state) == documented_keys(12)
    assert state["patch_embed.first_conv.0.weight"].shape == (128, 3, 1)
    assert state["patch_embed.second_conv.0.weight"].shape == (512, 512, 1)
    assert state["patch_embed.second_conv.3.weight"].shape == (384, 512, 1)
    assert state["pos_embed.0.weight"].shape == (128, 3) and state["pos_embed.2.weight"].shape == (384, 128)
    assert state["cls_token"].shape == state["cls_pos"].shape == (1, 1, 384)
    assert state["blocks.11.attn.qkv.weight"].shape == (3 * 384, 384)
    assert state["blocks.0.mlp.fc1.weight"].shape == (4 * 384, 384)
    assert set(small_encoder(qkv_bias=True).state_dict()) == documented_keys(3, qkv_bias=True)


def test_drop_path_rises_linearly_over_depth():
    model = PointTransformerEncoder(depth=5, drop_path_rate=0.2)
    rates = [block.drop_path.drop_prob for block in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])


def test_shapes():
    model = small_encoder().eval()
    points = clouds()
    patches, centres = model.group(points)
    assert patches.shape == (2, 16, 8, 3) and centres.shape == (2, 16, 3)
    tokens = model.embed(patches)
    assert tokens.shape == (2, 16, 48)
    assert model(points).shape == (2, 17, 48)
    assert model.forward_tokens(tokens[:, :5], centres[:, :5], with_cls=False).shape == (2, 5, 48)
    assert model.features(points).shape == (2, 96)


def test_group_is_group_patches_with_the_encoder_sizes():
    model, points = small_encoder(), clouds()
    for got, want in zip(model.group(points), group_patches(points, 16, 8)):
        assert torch.equal(got, want)


def test_features_are_cls_then_max_of_patch_tokens():
    model, points = small_encoder().eval(), clouds()
    tokens = model(points)
    features = model.features(points)
    assert torch.equal(features[:, :48], tokens[:, 0])
    assert torch.equal(features[:, 48:], tokens[:, 1:].max(dim=1).values)
    assert torch.equal(cls_max_pool(tokens), features)


def test_same_seed_same_model_and_output():
    a, b = small_encoder(seed=3).eval(), small_encoder(seed=3).eval()
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    points = clouds()
    assert torch.equal(a(points), b(points))
    assert torch.equal(a(points), a(points))
    assert not torch.equal(small_encoder(seed=4).eval()(points), a(points))


def test_training_forward_is_reproducible_from_the_seed():
    model, points = small_encoder(drop_path_rate=0.5), clouds()
    torch.manual_seed(7)
    first = model(points)
    torch.manual_seed(7)
    assert torch.equal(model(points), first)


def test_drop_path_and_dropout_are_off_in_eval():
    points = clouds()
    noisy = small_encoder(drop_path_rate=0.5, drop_rate=0.3, attn_drop_rate=0.3)
    clean = small_encoder(drop_path_rate=0.0)
    clean.load_state_dict(noisy.state_dict())
    noisy.eval()
    clean.eval()
    assert torch.equal(noisy(points), clean(points))
    noisy.train()
    torch.manual_seed(0)
    first = noisy(points)
    assert not torch.equal(first, noisy(points))  # stochastic while training


def test_zero_side_branch_is_exactly_a_no_op():
    model, points = small_encoder(), clouds()
    patches, centres = model.group(points)
    sides = [lambda h: torch.zeros_like(h)] * 3
    for mode in (model.eval, model.train):  # train: drop-path draws the same masks either way
        mode()
        torch.manual_seed(5)
        plain = model.forward_tokens(model.embed(patches), centres)
        torch.manual_seed(5)
        assert torch.equal(model.forward_tokens(model.embed(patches), centres, ffn_sides=sides), plain)


def test_side_branch_reads_post_attention_stream_and_adds_after_the_ffn():
    torch.manual_seed(0)
    block = Block(32, 4).eval()
    x = torch.randn(2, 9, 32)
    seen = []

    def side(h):
        seen.append(h)
        return torch.ones_like(h)

    out = block(x, side)
    torch.testing.assert_close(seen[0], x + block.attn(block.norm1(x)), rtol=0, atol=0)
    assert torch.equal(out, block(x) + 1)


def test_side_branches_go_to_their_blocks():
    model, points = small_encoder().eval(), clouds()
    patches, centres = model.group(points)
    tokens = model.embed(patches)
    calls = []
    sides = [None, lambda h: calls.append(h.shape) or torch.zeros_like(h), None]
    model.forward_tokens(tokens, centres, ffn_sides=sides)
    assert calls == [torch.Size([2, 17, 48])]  # cls included
    with pytest.raises(ValueError, match="one entry per block"):
        model.forward_tokens(tokens, centres, ffn_sides=[None])
    with pytest.raises(ValueError, match="centres must have shape"):
        model.forward_tokens(tokens, centres[:, :3])


def reference_forward(model: PointTransformerEncoder, points: torch.Tensor) -> torch.Tensor:
    """Point-MAE's PointTransformer forward written out op by op (eval mode), explicit softmax."""
    patches, centres = group_patches(points, model.num_groups, model.group_size)
    batch, groups, size, _ = patches.shape
    embed = model.patch_embed
    f = patches.reshape(batch * groups, size, 3).transpose(2, 1)
    f = embed.first_conv[3](F.relu(embed.first_conv[1](embed.first_conv[0](f))))
    f = torch.cat([f.max(dim=2, keepdim=True)[0].expand(-1, -1, size), f], dim=1)
    f = embed.second_conv[3](F.relu(embed.second_conv[1](embed.second_conv[0](f))))
    tokens = f.max(dim=2)[0].reshape(batch, groups, -1)
    x = torch.cat([model.cls_token.expand(batch, -1, -1), tokens], dim=1)
    pos = torch.cat([model.cls_pos.expand(batch, -1, -1), model.pos_embed(centres)], dim=1)
    for block in model.blocks:
        x = x + pos
        heads = block.attn.num_heads
        b, n, c = x.shape
        qkv = block.attn.qkv(block.norm1(x)).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * (c // heads) ** -0.5).softmax(dim=-1)
        x = x + block.attn.proj((attn @ v).transpose(1, 2).reshape(b, n, c))
        x = x + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(x))))
    return model.norm(x)


def test_matches_the_reference_computation():
    model, points = small_encoder().eval(), clouds()
    with torch.no_grad():
        for module in model.modules():  # non-trivial normalisation statistics
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
        torch.testing.assert_close(model(points), reference_forward(model, points), rtol=1e-5, atol=1e-5)


def to_reference_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for name, value in state.items():
        if name.startswith("patch_embed."):
            name = "encoder." + name[len("patch_embed."):]
        elif name.startswith("blocks."):
            name = "blocks.blocks." + name[len("blocks."):]
        renamed[name] = value
    return renamed


def test_convert_act_pretraining_checkpoint():
    source, points = small_encoder(seed=1).eval(), clouds()
    reference = {f"module.ACT_encoder.{k}": v for k, v in to_reference_names(source.state_dict()).items()}
    reference |= {"module.ACT_encoder.lm_head.weight": torch.zeros(8, 48),
                  "module.ACT_encoder.cls_head.0.weight": torch.zeros(8, 48),
                  "module.cls_pos": torch.zeros(1, 1, 48),  # the distiller's own, not the encoder's
                  "module.dvae.encoder.first_conv.0.weight": torch.zeros(16, 3, 1)}
    converted = convert_reference_state_dict({"base_model": reference, "epoch": 300})
    target = small_encoder(seed=2)
    target.load_state_dict(converted, strict=True)
    assert torch.equal(target.eval()(points), source(points))


def test_convert_point_mae_pretraining_checkpoint_lacks_only_the_cls_tokens():
    source = small_encoder(seed=1)
    state = {k: v for k, v in source.state_dict().items() if k not in ("cls_token", "cls_pos")}
    reference = {f"MAE_encoder.{k}": v for k, v in to_reference_names(state).items()}
    reference |= {"mask_token": torch.zeros(1, 1, 48), "MAE_decoder.blocks.blocks.0.norm1.weight": torch.ones(48),
                  "decoder_pos_embed.0.weight": torch.zeros(16, 3)}
    result = small_encoder(seed=2).load_state_dict(convert_reference_state_dict(reference), strict=False)
    assert set(result.missing_keys) == {"cls_token", "cls_pos"} and not result.unexpected_keys


def test_convert_finetuned_point_transformer_drops_the_head():
    source, points = small_encoder(seed=1).eval(), clouds()
    reference = to_reference_names(source.state_dict()) | {"cls_head_finetune.0.weight": torch.zeros(4, 96)}
    target = small_encoder(seed=2)
    target.load_state_dict(convert_reference_state_dict(reference), strict=True)
    assert torch.equal(target.eval()(points), source(points))


def test_convert_rejects_what_it_cannot_map():
    reference = to_reference_names(small_encoder().state_dict())
    with pytest.raises(ValueError, match="reduce_dim"):
        convert_reference_state_dict(reference | {"reduce_dim.weight": torch.zeros(48, 32)})
    with pytest.raises(ValueError, match="no Point-MAE / ACT encoder"):
        convert_reference_state_dict({"model": torch.zeros(1)})


def test_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match="divisible"):
        PointTransformerEncoder(embed_dim=50, num_heads=4, depth=1)
    with pytest.raises(ValueError, match="depth"):
        PointTransformerEncoder(depth=0)
