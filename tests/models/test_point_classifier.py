"""The object classifier: the reference head, frozen BatchNorm statistics, adapters per block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pptkit.models.point_classifier import ClassificationHead, PointTransformerClassifier
from pptkit.models.point_transformer import PointTransformerEncoder
from pptkit.models.spectral_adapter import SpectralAdapters


def encoder() -> PointTransformerEncoder:
    return PointTransformerEncoder(embed_dim=32, depth=2, num_heads=4, num_groups=8, group_size=8, pos_hidden=16,
                                   embed_first_channels=(16, 32), embed_second_hidden=32)


def test_head_is_linear_bn_relu_dropout_per_width_then_linear():
    head = ClassificationHead(64, 5, hidden=(256, 256), dropout=0.5)
    kinds = [type(m) for m in head.mlp]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout] * 2 + [nn.Linear]
    assert head.mlp[0].in_features == 64 and head.mlp[-1].out_features == 5 and head.mlp[3].p == 0.5
    assert head(torch.randn(4, 64)).shape == (4, 5)


def test_frozen_batchnorm_stays_in_eval_mode_and_keeps_its_statistics():
    model = PointTransformerClassifier(encoder(), 5, head_hidden=(16,))
    model.encoder.requires_grad_(False)
    model.train()
    assert not model.encoder.patch_embed.first_conv[1].training
    assert model.head.mlp[1].training and model.encoder.blocks[0].training
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model(torch.randn(4, 64, 3))
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert model.head.mlp[1].num_batches_tracked == 1
    model.eval()
    assert not model.head.mlp[1].training


def test_trainable_batchnorm_trains():
    model = PointTransformerClassifier(encoder(), 5, head_hidden=(16,)).train()
    assert model.encoder.patch_embed.first_conv[1].training


def test_one_adapter_per_block():
    with pytest.raises(ValueError, match="3 adapters for 2 blocks"):
        PointTransformerClassifier(encoder(), 5, adapters=SpectralAdapters(3, 32, rank=4))
    model = PointTransformerClassifier(encoder(), 5, head_hidden=(16,), adapters=SpectralAdapters(2, 32, rank=4),
                                       local_size=4).eval()
    assert model(torch.randn(2, 64, 3)).shape == (2, 5)
