"""Dense pseudo labels for new classes from scene tags, and the targets that distil them.

All functions work on per-point tensors of one batch; `allowed` (N, K) marks, per point, the
new classes its scene is tagged with (a point can only become a class its scene contains).

1. Initial masks (`novelty`, `zero_shot_scores`, `activation_map`, `initial_scores`,
   `initial_labels`): where a new class may be, times which tagged class it is. Where: the
   frozen old model's uncertainty u(x) (the normalised entropy of its old-class softmax; it has
   never been trained on a new class, so it is unsure there). Which: a weighted mean of two
   distributions over the scene's tagged classes, the zero-shot one (the old model's
   language-aligned point embeddings against the tagged names) and the activation map (learned
   from the tags alone: what tagged scenes' uncertain points have and untagged ones' lack).
2. Seed-guided refinement (`select_seeds`, `seed_affinity`, `refine_masks`): per tagged class,
   seeds drawn at random among the top-scoring points; every point's affinity is its mean
   cosine similarity to the seeds in a frozen feature space (centred on the scene's mean
   feature, so what every point shares does not make every point alike), averaged over its
   superpoint, min-max normalised over the scene; points at or above `threshold` of that range
   form the refined mask. Initial and refined masks keep at most a set fraction of a scene
   (`keep_top_fraction`): an object does not cover a room, and a weak activation map would.
3. Fusion (`fuse_masks`): the union of the initial and the refined mask per class; a point in
   several classes' masks goes to the one with the highest initial score + affinity.
4. Targets (`distillation_targets`) and losses (`soft_cross_entropy`, `dense_contrastive_loss`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NO_CLASS = -1


def novelty(old_prob: torch.Tensor) -> torch.Tensor:
    """(N,) u(x) in [0, 1]: the normalised entropy of the old model's class distribution `old_prob`
    (N, K_old). The old model never learned the new classes (their points were ignored), so its
    uncertainty is where they can be; its confidence is where old classes are."""
    entropy = -(old_prob * old_prob.clamp(min=1e-12).log()).sum(dim=1)
    return entropy / math.log(max(old_prob.shape[1], 2))


def among_tags(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(N, K) softmax of `logits` over each point's tagged classes (untagged: 0, no tag: all 0)."""
    return torch.nan_to_num(logits.masked_fill(~allowed, float("-inf")).softmax(dim=1), nan=0.0) * allowed


def zero_shot_scores(embed: torch.Tensor, text: torch.Tensor, scale: float | torch.Tensor,
                     allowed: torch.Tensor) -> torch.Tensor:
    """(N, K) zero-shot distribution over the scene's tagged classes.

    `embed` (N, D) and the new classes' `text` (K, D) are L2-normalised; logits = scale * cosine,
    as the language-guided head computes them. Only the tagged names compete: against the old
    names the new ones would get almost nothing, as the embeddings were trained to sit on the
    old names (the seen-class bias of generalised zero-shot segmentation); `novelty` says where.
    """
    return among_tags(scale * (embed @ text.T), allowed)


def activation_map(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """(N, K) the activation head's distribution over each point's tagged classes."""
    return among_tags(logits, allowed)


def initial_scores(novelty: torch.Tensor, zero_shot: torch.Tensor, cam_map: torch.Tensor, allowed: torch.Tensor,
                   zero_shot_weight: float) -> torch.Tensor:
    """u(x) * (w * zero-shot + (1 - w) * activation map), 0 for untagged classes."""
    return novelty[:, None] * (zero_shot_weight * zero_shot + (1.0 - zero_shot_weight) * cam_map) * allowed


def initial_labels(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N,) the best-scoring new class where its score reaches `threshold`, else NO_CLASS."""
    best, label = scores.max(dim=1)
    return torch.where(best >= threshold, label, torch.full_like(label, NO_CLASS))


def keep_top_fraction(mask: torch.Tensor, score: torch.Tensor, fraction: float) -> torch.Tensor:
    """`mask` (N,) bool reduced to its highest-scoring members when it holds more than
    `fraction` of the N points (a mask cannot cover more of a scene than an object does)."""
    limit = max(1, int(round(fraction * mask.numel())))
    if int(mask.sum()) <= limit:
        return mask
    cutoff = score.masked_fill(~mask, float("-inf")).topk(limit).values[-1]
    return mask & (score >= cutoff)


def limit_labels(labels: torch.Tensor, scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """One scene's labels (N,) with each class's mask limited by `keep_top_fraction` of its score."""
    out = labels.clone()
    for k in torch.unique(labels[labels >= 0]).tolist():
        member = labels == k
        out[member & ~keep_top_fraction(member, scores[:, k], fraction)] = NO_CLASS
    return out


def select_seeds(scores: torch.Tensor, num_seeds: int, candidates: int, generator: torch.Generator) -> torch.Tensor:
    """`num_seeds` distinct point indices drawn uniformly among the `candidates` top-scoring ones."""
    pool = min(max(candidates, num_seeds), scores.shape[0])
    top = scores.topk(pool).indices
    pick = torch.randperm(pool, generator=generator, device=generator.device)[:num_seeds]
    return top[pick.to(top.device)]


def superpoint_mean(values: torch.Tensor, superpoint: torch.Tensor) -> torch.Tensor:
    """Each point's value replaced by the mean over its superpoint (`superpoint` (N,) ids)."""
    ids, inverse = torch.unique(superpoint, return_inverse=True)
    sums = values.new_zeros(len(ids)).index_add_(0, inverse, values)
    counts = values.new_zeros(len(ids)).index_add_(0, inverse, torch.ones_like(values))
    return (sums / counts)[inverse]


def seed_affinity(feats: torch.Tensor, seeds: torch.Tensor, superpoint: torch.Tensor | None) -> torch.Tensor:
    """(N,) affinity to the seeds in [0, 1]: mean cosine similarity of L2-normalised `feats` to
    the seeds' features, averaged per superpoint (when given), min-max normalised."""
    affinity = (feats @ feats[seeds].T).mean(dim=1)
    if superpoint is not None:
        affinity = superpoint_mean(affinity, superpoint)
    low, high = affinity.min(), affinity.max()
    return (affinity - low) / (high - low).clamp(min=1e-12)


def refine_masks(scores: torch.Tensor, tagged: torch.Tensor, feats: torch.Tensor, superpoint: torch.Tensor | None,
                 num_seeds: int, candidates: int, threshold: float, generator: torch.Generator,
                 max_fraction: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Refined masks (N, K) bool and affinities (N, K) of one scene's points for its tagged classes.

    `scores` (N, K) are the initial scores, `tagged` (K,) the scene's tags and `feats` (N, C)
    the frozen features of the scene's points; untagged classes get an empty mask and affinity 0.
    A mask keeps at most `max_fraction` of the points (the highest affinities).
    """
    unit = F.normalize(feats - feats.mean(dim=0, keepdim=True), dim=1)
    masks = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    affinities = torch.zeros(scores.shape, dtype=unit.dtype, device=scores.device)
    for k in torch.nonzero(tagged).flatten().tolist():
        seeds = select_seeds(scores[:, k], num_seeds, candidates, generator)
        affinity = seed_affinity(unit, seeds, superpoint)
        affinities[:, k] = affinity
        masks[:, k] = keep_top_fraction(affinity >= threshold, affinity, max_fraction)
    return masks, affinities


def fuse_masks(initial: torch.Tensor, scores: torch.Tensor, refined: torch.Tensor | None,
               affinities: torch.Tensor | None) -> torch.Tensor:
    """(N,) fused label: union of each class's initial (`initial` labels) and refined mask;
    conflicts go to the class with the highest score + affinity. NO_CLASS outside every mask."""
    member = F.one_hot(initial.clamp(min=0), scores.shape[1]).bool() & (initial >= 0)[:, None]
    priority = scores
    if refined is not None:
        member = member | refined
        priority = scores + affinities
    priority = priority.masked_fill(~member, float("-inf"))
    best, label = priority.max(dim=1)
    return torch.where(torch.isfinite(best), label, torch.full_like(label, NO_CLASS))


def hard_soft_mix(new_prob: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * one-hot(argmax, where it reaches 0.5) + (1 - alpha) * new_prob, per point."""
    best, label = new_prob.max(dim=1)
    hard = F.one_hot(label, new_prob.shape[1]).to(new_prob.dtype) * (best >= 0.5)[:, None].to(new_prob.dtype)
    return alpha * hard + (1.0 - alpha) * new_prob


def distillation_targets(old_prob: torch.Tensor, new_prob: torch.Tensor, allowed: torch.Tensor,
                         alpha: float, beta: float) -> torch.Tensor:
    """(N, K_old + K) target distributions for the student.

    New classes: the teacher's per-class probabilities (restricted to the scene's tags), mixed
    hard/soft by `alpha` (t). Old classes: the old model's softmax `old_prob`, times the mass
    left to old classes. That mass mixes the two sources as FMWISS mixes their background:
    the old model, which knows no new class, gives every point to old classes (1), the
    teacher gives it 1 - sum(t); beta weighs the old model: m = beta + (1 - beta)(1 - sum t).
    The row [m * old_prob, t] is normalised to sum 1 (the student's head is a softmax).
    """
    t = hard_soft_mix(new_prob * allowed, alpha) * allowed
    total = t.sum(dim=1, keepdim=True).clamp(max=1.0)
    old_mass = beta + (1.0 - beta) * (1.0 - total)
    target = torch.cat([old_prob * old_mass, t], dim=1)
    return target / target.sum(dim=1, keepdim=True).clamp(min=1e-12)


def balanced_bce(logits: torch.Tensor, target: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Per-point BCE of each class's logits against its 0/1 `target` (N, K), over the points whose
    scene is tagged with the class (`allowed`), positives and negatives weighted equally per class:
    a mask covers a few percent of a scene, and plain BCE would teach the head to say no everywhere."""
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    positive, negative = (target > 0.5) & allowed, (target <= 0.5) & allowed
    per_class = []
    for k in range(target.shape[1]):
        terms = [loss[rows, k].mean() for rows in (positive[:, k], negative[:, k]) if rows.any()]
        if terms:
            per_class.append(torch.stack(terms).mean())
    return torch.stack(per_class).mean() if per_class else logits.sum() * 0.0


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy -sum(target * log_softmax(logits)) against target distributions."""
    return -(target * logits.log_softmax(dim=1)).sum(dim=1)


def dense_contrastive_loss(embed: torch.Tensor, labels: torch.Tensor, points_per_class: int, temperature: float,
                           generator: torch.Generator) -> torch.Tensor:
    """Supervised contrastive loss over up to `points_per_class` random points of each class.

    `embed` (N, E) is L2-normalised; `labels` (N,) are class ids (negative = unlabelled, not
    drawn). Each drawn point is pulled towards the drawn points of its class and pushed from the
    others; anchors whose class has a single drawn point contribute nothing. 0 (connected to
    the graph) when no anchor has a positive.
    """
    picked = []
    for c in torch.unique(labels[labels >= 0]).tolist():
        rows = torch.nonzero(labels == c).flatten()
        order = torch.randperm(len(rows), generator=generator, device=generator.device)[:points_per_class]
        picked.append(rows[order.to(rows.device)])
    if not picked:
        return embed.sum() * 0.0
    rows = torch.cat(picked)
    z, y = embed[rows], labels[rows]
    similarity = (z @ z.T) / temperature
    self_mask = torch.eye(len(rows), dtype=torch.bool, device=z.device)
    similarity = similarity.masked_fill(self_mask, float("-inf"))
    log_prob = similarity.log_softmax(dim=1)
    positive = (y[:, None] == y[None, :]) & ~self_mask
    has_positive = positive.any(dim=1)
    if not has_positive.any():
        return embed.sum() * 0.0
    mean_log_prob = log_prob.masked_fill(~positive, 0.0).sum(dim=1) / positive.sum(dim=1).clamp(min=1)
    return -mean_log_prob[has_positive].mean()
