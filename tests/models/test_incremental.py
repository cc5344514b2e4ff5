"""Pseudo masks, seeds, fusion and distillation targets on hand-made inputs; the incremental heads."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pptkit.models.incremental import ClassActivationHead, PlugInTeacherHead, mil_pool
from pptkit.models.pseudo_masks import (
    NO_CLASS,
    activation_map,
    balanced_bce,
    dense_contrastive_loss,
    distillation_targets,
    fuse_masks,
    hard_soft_mix,
    initial_labels,
    initial_scores,
    keep_top_fraction,
    limit_labels,
    novelty,
    refine_masks,
    seed_affinity,
    select_seeds,
    superpoint_mean,
    zero_shot_scores,
)


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_seeds_are_distinct_and_drawn_among_the_top_candidates():
    scores = torch.tensor([0.1, 0.9, 0.8, 0.2, 0.95, 0.7, 0.0, 0.85])
    for seed in range(20):
        seeds = select_seeds(scores, num_seeds=3, candidates=4, generator=generator(seed))
        assert len(set(seeds.tolist())) == 3
        assert set(seeds.tolist()) <= {4, 1, 7, 2}  # the four best
    assert select_seeds(scores, 3, 4, generator(5)).tolist() == select_seeds(scores, 3, 4, generator(5)).tolist()
    drawn = {tuple(sorted(select_seeds(scores, 3, 4, generator(s)).tolist())) for s in range(30)}
    assert len(drawn) > 1  # random among the top, not always the same three
    # Fewer candidates than seeds: the candidates grow to the seeds; more seeds than points: all points.
    assert sorted(select_seeds(scores, 5, 2, generator()).tolist()) == sorted(scores.topk(5).indices.tolist())
    assert len(select_seeds(scores[:2], 9, 45, generator())) == 2


def test_affinity_is_the_mean_similarity_to_the_seeds_pooled_per_superpoint_and_normalised():
    feats = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    seeds = torch.tensor([0, 1])
    raw = (feats @ feats[seeds].T).mean(dim=1)  # 0.9, 0.9, 0.3, -0.9
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    assert torch.allclose(seed_affinity(feats, seeds, None), expected)
    pooled = seed_affinity(feats, seeds, torch.tensor([0, 0, 1, 1]))  # superpoints {0,1} and {2,3}
    assert torch.allclose(pooled, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert torch.allclose(superpoint_mean(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([7, 7, 2])),
                          torch.tensor([2.0, 2.0, 5.0]))


def test_refined_masks_threshold_the_affinity_of_centred_features_for_tagged_classes_only():
    # Six points; class 0 scores peak at points 0 and 1, which the features put with point 2.
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.9, 0.1], [0.0, 1.0], [0.1, 1.0], [-1.0, -1.0]]) + 5.0
    scores = torch.zeros(6, 2)
    scores[:, 0] = torch.tensor([0.9, 0.8, 0.1, 0.0, 0.0, 0.0])
    tagged = torch.tensor([True, False])
    masks, affinity = refine_masks(scores, tagged, feats, None, num_seeds=2, candidates=2, threshold=0.7,
                                   generator=generator())
    assert masks[:, 1].sum() == 0 and (affinity[:, 1] == 0).all()  # untagged: nothing
    unit = F.normalize(feats - feats.mean(dim=0), dim=1)  # centred: the shared +5 says nothing
    assert torch.allclose(affinity[:, 0], seed_affinity(unit, torch.tensor([0, 1]), None))
    assert masks[:, 0].tolist() == [True, True, True, False, False, False]
    loose, _ = refine_masks(scores, tagged, feats, None, 2, 2, threshold=0.05, generator=generator())
    assert loose[:, 0].tolist() == [True, True, True, False, True, False]  # 0.061 >= 0.05


def test_masks_keep_at_most_a_fraction_of_the_scene():
    score = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6, 0.4, 0.0])
    mask = score > 0.15
    assert keep_top_fraction(mask, score, 0.3).nonzero().flatten().tolist() == [1, 3, 5]
    assert torch.equal(keep_top_fraction(mask, score, 1.0), mask)
    labels = torch.tensor([0, 0, 0, 1, NO_CLASS, 0, 0, 0, 0, 0])
    scores = torch.stack([score, torch.ones(10)], dim=1)
    # Class 0 has 8 points, 2 allowed (20%): its two best (1 and 5); class 1 keeps its single point.
    assert limit_labels(labels, scores, 0.2).tolist() == [-1, 0, -1, 1, -1, 0, -1, -1, -1, -1]


def test_fusion_is_the_union_of_initial_and_refined_masks_with_conflicts_by_score():
    scores = torch.tensor([[0.9, 0.0], [0.6, 0.7], [0.2, 0.3], [0.0, 0.0], [0.4, 0.1]])
    initial = torch.tensor([0, 1, NO_CLASS, NO_CLASS, NO_CLASS])
    refined = torch.tensor([[False, False], [True, True], [True, True], [False, False], [True, False]])
    affinity = torch.tensor([[0.0, 0.0], [0.9, 0.1], [0.2, 0.5], [0.0, 0.0], [0.5, 0.0]])
    fused = fuse_masks(initial, scores, refined, affinity)
    # 0: initial only; 1: both masks, 0.6+0.9 > 0.7+0.1; 2: 0.2+0.2 < 0.3+0.5; 3: none; 4: refined only.
    assert fused.tolist() == [0, 0, 1, NO_CLASS, 0]
    assert fuse_masks(initial, scores, None, None).tolist() == initial.tolist()


def test_initial_masks_from_novelty_zero_shot_and_activation_map():
    allowed = torch.tensor([[True, False], [True, True], [True, True]])
    text = torch.eye(3)[1:]  # new class k's name embedding is axis k + 1
    embed = torch.eye(3)[[1, 2, 0]]  # points 0, 1 sit on classes 0, 1; point 2 on neither
    old_prob = torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0]])
    u = novelty(old_prob)
    assert torch.allclose(u, torch.tensor([1.0, 1.0, 0.0]), atol=1e-6)  # the old model explains point 2
    z = zero_shot_scores(embed, text, 100.0, allowed)
    assert torch.allclose(z[0], torch.tensor([1.0, 0.0]))  # class 1 is not tagged for point 0
    assert z[1, 1] > 0.99 and torch.allclose(z[2], torch.tensor([0.5, 0.5]))
    assert torch.allclose(zero_shot_scores(embed, text, 100.0, torch.zeros_like(allowed)), torch.zeros(3, 2))
    cam_logits = torch.tensor([[9.0, 9.0], [5.0, 0.0], [0.0, 0.0]])
    cam = activation_map(cam_logits, allowed)
    assert cam[0, 1] == 0 and cam[0, 0] == 1 and cam[1, 0] > 0.99
    assert torch.allclose(cam[2], torch.full((2,), 0.5))
    scores = initial_scores(u, z, cam, allowed, 0.25)
    assert torch.allclose(scores, u[:, None] * (0.25 * z + 0.75 * cam))
    assert initial_labels(scores, 0.5).tolist() == [0, 0, NO_CLASS]  # point 1: the map outweighs zero-shot
    assert initial_labels(initial_scores(u, z, cam, allowed, 1.0), 0.5).tolist() == [0, 1, NO_CLASS]


def test_distillation_targets_mix_old_model_and_teacher():
    old = torch.tensor([[0.7, 0.3], [0.7, 0.3], [0.5, 0.5]])
    teacher = torch.tensor([[0.0, 0.0], [0.9, 0.2], [0.3, 0.4]])
    allowed = torch.tensor([[True, True], [True, True], [True, False]])
    y = distillation_targets(old, teacher, allowed, alpha=0.5, beta=0.9)
    assert torch.allclose(y.sum(dim=1), torch.ones(3))
    assert torch.allclose(y[0], torch.tensor([0.7, 0.3, 0.0, 0.0]))  # no new evidence: the old model
    t = torch.tensor([0.5 * 1 + 0.5 * 0.9, 0.5 * 0.2])  # hard/soft mix: argmax 0 reaches 0.5
    mass = 0.9 + 0.1 * (1 - min(1.0, float(t.sum())))
    row = torch.cat([old[1] * mass, t])
    assert torch.allclose(y[1], row / row.sum())
    assert y[1, 2] > y[1, 0]  # a confident teacher wins over the old model's best class
    # Point 2: only class 0 is allowed, and 0.3 < 0.5 stays soft: t = (0.15, 0).
    row = torch.cat([old[2] * (0.9 + 0.1 * 0.85), torch.tensor([0.15, 0.0])])
    assert torch.allclose(y[2], row / row.sum())
    assert torch.allclose(distillation_targets(old, teacher, allowed, 0.5, beta=1.0)[:, :2].sum(1) > 0,
                          torch.ones(3, dtype=torch.bool))
    assert torch.allclose(hard_soft_mix(torch.tensor([[0.2, 0.6]]), 1.0), torch.tensor([[0.0, 1.0]]))


def test_balanced_bce_weighs_a_small_mask_like_the_rest_of_its_scene():
    target = torch.zeros(10, 2)
    target[0, 0] = 1.0  # class 0: one positive among ten points; class 1 untagged on rows 5..9
    allowed = torch.ones(10, 2, dtype=torch.bool)
    allowed[5:, 1] = False
    logits = torch.zeros(10, 2)
    logits[0, 0], logits[:5, 1] = 3.0, -3.0
    per_point = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    expected = ((per_point[0, 0] + per_point[1:, 0].mean()) / 2 + per_point[:5, 1].mean()) / 2
    assert torch.isclose(balanced_bce(logits, target, allowed), expected)
    # Saying "no" everywhere is cheap under plain BCE, not here.
    silent = torch.full((10, 2), -5.0)
    plain = F.binary_cross_entropy_with_logits(silent, target)
    assert balanced_bce(silent, target, allowed) > 4 * plain
    assert balanced_bce(logits, target, torch.zeros_like(allowed)).item() == 0.0


def test_dense_contrastive_loss_prefers_clustered_embeddings():
    labels = torch.tensor([0, 0, 0, 1, 1, 1, -1])
    clustered = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1], [0.0, 1.0], [0.1, 1.0],
                                          [-0.1, 1.0], [1.0, 1.0]]), dim=1)
    mixed = clustered[[0, 3, 1, 4, 2, 5, 6]]
    good = dense_contrastive_loss(clustered, labels, 8, 0.1, generator())
    bad = dense_contrastive_loss(mixed, labels, 8, 0.1, generator())
    assert good < bad
    embed = clustered.clone().requires_grad_(True)
    loss = dense_contrastive_loss(embed, torch.tensor([0, 1, 2, 3, 4, 5, -1]), 8, 0.1, generator())
    loss.backward()  # no positives anywhere: zero, still in the graph
    assert loss.item() == 0.0 and embed.grad is not None
    # Two points drawn per class: each anchor's only candidate is its positive, so the loss is 0.
    capped = dense_contrastive_loss(clustered, torch.zeros(7, dtype=torch.long), 2, 0.1, generator())
    assert math.isclose(capped.item(), 0.0, abs_tol=1e-6)


def test_mil_pool_averages_the_top_points_of_each_scene():
    logits = torch.tensor([[1.0], [5.0], [3.0], [0.0], [-2.0], [4.0]])
    scene = torch.tensor([0, 0, 0, 0, 1, 1])
    assert mil_pool(logits, scene, 2, 0.5).flatten().tolist() == [4.0, 4.0]
    assert mil_pool(logits, scene, 2, 0.01).flatten().tolist() == [5.0, 4.0]
    # Candidates only: scene 0 pools points 0 and 3; scene 1 has none and pools all its points.
    candidate = torch.tensor([True, False, False, True, False, False])
    assert mil_pool(logits, scene, 2, 1.0, candidate).flatten().tolist() == [0.5, 1.0]


def test_heads_shapes():
    cam = ClassActivationHead(8, 5)
    teacher = PlugInTeacherHead(8, 3, hidden_channels=16, embed_channels=4)
    feats = torch.randn(10, 8)
    assert cam(feats).shape == (10, 5)
    logits, embed = teacher(feats)
    assert logits.shape == (10, 3) and embed.shape == (10, 4)
    assert torch.allclose(embed.norm(dim=1), torch.ones(10))
