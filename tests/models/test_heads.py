"""Categorical alignment heads: logits over the current dataset's classes, in its label order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pptkit.data.classes import S3DIS13, SCANNET20
from pptkit.models.heads import DecoupledHead, LanguageGuidedHead, UnionizedHead
from pptkit.models.label_space import UnionLabelSpace

SPACE = UnionLabelSpace.from_class_names({"scannet": SCANNET20, "s3dis": S3DIS13})
MAPS = SPACE.mappings(["scannet", "s3dis"])
SCANNET_CHAIR, S3DIS_CHAIR = SCANNET20.index("chair"), S3DIS13.index("chair")


def test_decoupled_head_has_one_classifier_per_dataset():
    torch.manual_seed(0)
    head = DecoupledHead(16, [20, 13])
    feats = torch.randn(7, 16)
    assert head(feats, 0).shape == (7, 20) and head(feats, 1).shape == (7, 13)
    assert not torch.equal(head(feats, 0)[:, SCANNET_CHAIR], head(feats, 1)[:, S3DIS_CHAIR])
    with pytest.raises(ValueError, match="outside"):
        head(feats, 2)


def test_unionized_head_reads_the_datasets_columns_of_one_classifier():
    torch.manual_seed(0)
    head = UnionizedHead(16, len(SPACE), MAPS)
    feats = torch.randn(7, 16)
    union_logits = head.classifier(feats)
    scannet, s3dis = head(feats, 0), head(feats, 1)
    assert scannet.shape == (7, 20) and s3dis.shape == (7, 13)
    for local, name in enumerate(S3DIS13):
        assert torch.equal(s3dis[:, local], union_logits[:, SPACE.union_names.index(name)])
    assert torch.equal(scannet[:, SCANNET_CHAIR], s3dis[:, S3DIS_CHAIR])  # shared class, shared logit
    assert "dataset_to_union.dataset_1" in head.state_dict()


def test_cross_entropy_on_restricted_logits_only_touches_that_datasets_classes():
    head = UnionizedHead(16, len(SPACE), MAPS)
    labels = torch.tensor([S3DIS_CHAIR, -1, 0])
    F.cross_entropy(head(torch.randn(3, 16), 1), labels, ignore_index=-1).backward()
    touched = head.classifier.weight.grad.abs().sum(dim=1) > 0
    assert touched.nonzero().flatten().tolist() == sorted(MAPS[1].tolist())


def test_language_guided_head_is_scaled_cosine_similarity_with_the_datasets_text():
    torch.manual_seed(0)
    text = torch.randn(len(SPACE), 12) * 3.0
    head = LanguageGuidedHead(16, text, MAPS)  # the reference's frozen CLIP scale, 100
    feats = torch.randn(9, 16)
    point = F.normalize(head.proj(feats), dim=1)
    expected = 100.0 * (point @ F.normalize(text, dim=1)[MAPS[1]].T)
    logits = head(feats, 1)
    assert logits.shape == (9, 13)
    torch.testing.assert_close(logits, expected)
    assert logits.abs().max() <= 100.0 + 1e-3
    torch.testing.assert_close(head(feats, 0)[:, SCANNET_CHAIR], logits[:, S3DIS_CHAIR])


def test_language_guided_scale_multiplies_logits_and_is_frozen_by_default():
    torch.manual_seed(0)
    text = torch.randn(len(SPACE), 12)
    warm = LanguageGuidedHead(16, text, MAPS, logit_scale=1.0)
    cold = LanguageGuidedHead(16, text, MAPS, logit_scale=1 / 0.07)
    cold.load_state_dict({**warm.state_dict(), "log_scale": cold.log_scale})
    feats = torch.randn(5, 16)
    torch.testing.assert_close(cold(feats, 0), warm(feats, 0) / 0.07)
    assert "log_scale" in cold.state_dict() and all(p is not cold.log_scale for p in cold.parameters())
    with pytest.raises(ValueError, match="logit_scale"):
        LanguageGuidedHead(16, text, MAPS, logit_scale=0.0)
    with pytest.raises(ValueError, match="logit_scale"):
        LanguageGuidedHead(16, text, MAPS, logit_scale=150.0)


def test_a_learnable_scale_trains_and_stays_at_most_100():
    torch.manual_seed(0)
    head = LanguageGuidedHead(16, torch.randn(len(SPACE), 12), MAPS, logit_scale=10.0, learnable_scale=True)
    assert any(p is head.log_scale for p in head.parameters())
    F.cross_entropy(head(torch.randn(6, 16), 0), torch.tensor([0, 1, 2, 3, 4, 5])).backward()
    assert head.log_scale.grad is not None and head.log_scale.grad != 0
    with torch.no_grad():
        head.log_scale.fill_(10.0)  # e^10 >> 100
    assert head.scale.item() == pytest.approx(100.0)


def test_language_guided_text_is_a_frozen_checkpointed_buffer():
    text = torch.randn(len(SPACE), 12)
    head = LanguageGuidedHead(16, text, MAPS)
    assert "text_embeddings" in head.state_dict()
    assert all(p is not head.text_embeddings for p in head.parameters())
    F.cross_entropy(head(torch.randn(4, 16), 0), torch.tensor([0, 1, 2, -1]), ignore_index=-1).backward()
    assert head.text_embeddings.grad is None and head.proj.weight.grad is not None
    torch.testing.assert_close(head.text_embeddings.norm(dim=1), torch.ones(len(SPACE)))


def test_bad_mappings_are_rejected():
    with pytest.raises(ValueError, match="0..3"):
        UnionizedHead(8, 4, [torch.tensor([0, 4])])
    with pytest.raises(ValueError, match="same union entry"):
        UnionizedHead(8, 4, [torch.tensor([1, 1])])
    with pytest.raises(ValueError, match=r"\(U, D\)"):
        LanguageGuidedHead(8, torch.randn(4), [torch.tensor([0])])
