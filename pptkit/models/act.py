"""ACT (Dong et al., ICLR 2023, "Autoencoders as Cross-Modal Teachers") and the Point-MAE baseline.

Stage I, `ACTAutoencoder` (a dVAE-style autoencoder built around a frozen image Transformer):
points -> patches (FPS centres, kNN, recentred) -> mini-PointNet token per patch -> graph
convolution over the patch centres -> logits over a codebook -> Gumbel-softmax -> codebook mix
-> `PromptedTeacher` (frozen ViT blocks, VPT-deep prompts) -> graph convolution -> folding
decoder (coarse and fine points per patch). Loss: Chamfer-L1 of the coarse and the fine points
against each patch, plus a warmed-up weight times the KL divergence between the uniform
distribution and the mean code distribution of each cloud (`kl_to_uniform`).

Stage II, `ACTDistillation`: a point-patch Transformer student (`PointTransformerEncoder`) sees
only the visible patches of a random mask (ratio 0.8); a 2-block decoder with mask tokens
predicts, at the masked patches, the frozen stage-I model's latent features (its second graph
convolution's output, which follows the teacher: ACT's ``forward_tokenizer_features`` with
``return_global=True``); loss mean(1 - cosine).

Baseline, `PointMAE`: the student sees the visible patches (mask 0.6), a 4-block decoder
predicts the masked patches' points; loss Chamfer-L2 per masked patch.

Every random draw (masks, Gumbel noise, dropout) comes from torch's global generator; masks are
drawn on the CPU so that a CPU and a CUDA run of the same seed mask the same patches.

Frozen weights stay out of `state_dict()`: the teacher's ViT blocks (stage I) and the whole
stage-I model (stage II) are rebuilt from their own files, so checkpoints hold only what trains
(see `omit_from_state_dict`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pptkit.models.point_ops import chamfer_distance, group_patches, knn
from pptkit.models.point_transformer import Block, MiniPointNet, PointTransformerEncoder
from pptkit.models.vit_teacher import PromptedTeacher, VisionTransformer

MaskType = Literal["rand", "block"]
TargetCodes = Literal["sample", "argmax"]


# --- schedules and losses ------------------------------------------------------------------


def cosine_schedule(step: int, start: float, end: float, steps: int, delay: int = 0) -> float:
    """`start` until `delay`, then a half cosine to `end` over `steps` steps, then `end`.

    ACT anneals the Gumbel temperature 1 -> 0.0625 over 100k steps (no delay) and warms the KL
    weight 0 -> 0.1 over 100k steps after a 10k-step delay.
    """
    t = step - delay
    if t <= 0:
        return float(start)
    if steps <= 0 or t >= steps:
        return float(end)
    return end + (start - end) * (1.0 + math.cos(math.pi * t / steps)) / 2.0


def kl_to_uniform(logits: Tensor) -> Tensor:
    """KL(uniform || mean code distribution), averaged over clouds.

    logits (B, G, T) over T codes for G patches: each cloud's code distribution is the mean over
    its patches of softmax(logits); a codebook used evenly scores 0. The log of the mean is a
    logsumexp of log-softmaxes, which never takes the log of an underflowed zero.
    """
    groups, codes = logits.shape[1], logits.shape[2]
    log_mean = torch.logsumexp(F.log_softmax(logits.float(), dim=-1), dim=1) - math.log(groups)
    return (-math.log(codes) - log_mean).mean(dim=-1).mean()


def cosine_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """mean(1 - cosine similarity) over the last axis; ACT's feature-distillation loss."""
    return (1.0 - F.cosine_similarity(prediction.float(), target.float(), dim=-1)).mean()


def patch_chamfer(prediction: Tensor, target: Tensor, kind: Literal["l1", "l2"]) -> Tensor:
    """Chamfer distance between predicted and true patches (..., K', 3) vs (..., K, 3), one cloud
    per patch, averaged over patches."""
    return chamfer_distance(prediction.reshape(-1, *prediction.shape[-2:]).float(),
                            target.reshape(-1, *target.shape[-2:]).float(), kind=kind)


# --- masks -----------------------------------------------------------------------------------


def num_masked(num_groups: int, ratio: float) -> int:
    """Patches masked per cloud: floor(ratio * G), as the reference."""
    return int(ratio * num_groups)


def random_mask(batch: int, num_groups: int, ratio: float) -> Tensor:
    """(B, G) bool, True = masked: exactly floor(ratio * G) patches per cloud, uniformly at random,
    independently per cloud (ACT / Point-MAE ``mask_type: rand``). Drawn on the CPU."""
    order = torch.rand(batch, num_groups).argsort(dim=1)
    mask = torch.zeros(batch, num_groups, dtype=torch.bool)
    mask.scatter_(1, order[:, :num_masked(num_groups, ratio)], True)
    return mask


def block_mask(centres: Tensor, ratio: float) -> Tensor:
    """(B, G) bool: the floor(ratio * G) centres nearest a random centre of each cloud, which
    masks one contiguous region (the reference's ``mask_type: block``). The seed centre is drawn
    on the CPU; the result lives on the CPU."""
    batch, groups, _ = centres.shape
    seed = torch.randint(groups, (batch,))
    work = centres.detach().float().cpu()
    distance = (work - work[torch.arange(batch), seed].unsqueeze(1)).norm(dim=-1)
    order = distance.argsort(dim=1, stable=True)
    mask = torch.zeros(batch, groups, dtype=torch.bool)
    mask.scatter_(1, order[:, :num_masked(groups, ratio)], True)
    return mask


def draw_mask(centres: Tensor, ratio: float, mask_type: MaskType) -> Tensor:
    """The mask of `mask_type` for centres (B, G, 3), on the centres' device."""
    if mask_type == "rand":
        mask = random_mask(centres.shape[0], centres.shape[1], ratio)
    elif mask_type == "block":
        mask = block_mask(centres, ratio)
    else:
        raise ValueError(f"mask_type must be 'rand' or 'block', got {mask_type!r}")
    return mask.to(centres.device)


def split_by_mask(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """x (B, G, ...) -> (visible (B, V, ...), masked (B, M, ...)), each in patch order; every
    cloud must mask the same number of patches."""
    batch = x.shape[0]
    return (x[~mask].reshape(batch, -1, *x.shape[2:]), x[mask].reshape(batch, -1, *x.shape[2:]))


# --- frozen weights out of the state dict -----------------------------------------------------


def omit_from_state_dict(module: nn.Module, prefixes: Sequence[str]) -> None:
    """Leave the tensors under `prefixes` (names relative to `module`) out of
    `module.state_dict()`, and accept their absence in `module.load_state_dict()`.

    For frozen weights that are rebuilt from their own files (a teacher, a stage-I model):
    checkpoints then hold only what trains. Call it on the module whose `state_dict()` is saved.
    """
    prefixes = tuple(prefixes)

    def drop(_module, state_dict, prefix, _metadata):
        for key in [k for k in state_dict if k.startswith(tuple(prefix + p for p in prefixes))]:
            del state_dict[key]

    def allow_missing(_module, incompatible):
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith(prefixes)]

    module.register_state_dict_post_hook(drop)
    module.register_load_state_dict_post_hook(allow_missing)


# --- stage I building blocks -------------------------------------------------------------------


class GraphConv(nn.Module):
    """DGCNN-style edge convolutions over patch centres (ACT / Point-BERT's ``DGCNN``).

    features (B, G, C_in) -> a 1x1 conv to `input_channels`, then per layer: for every patch its
    `k` nearest centres (itself included), edge features [neighbour - self, self], a 1x1 conv,
    GroupNorm, LeakyReLU(0.2), max over the neighbours; the outputs of all layers are
    concatenated and mapped by a 1x1 conv, GroupNorm and LeakyReLU to `out_channels`.
    """

    def __init__(self, in_channels: int, out_channels: int, k: int = 4, input_channels: int = 128,
                 channels: Sequence[int] = (256, 512, 512, 1024), norm_groups: int = 4,
                 negative_slope: float = 0.2):
        super().__init__()
        self.k = k
        self.input_trans = nn.Conv1d(in_channels, input_channels, 1)
        layers, previous = [], input_channels
        for width in channels:
            layers.append(nn.Sequential(
                nn.Conv2d(2 * previous, width, 1, bias=False), nn.GroupNorm(norm_groups, width),
                nn.LeakyReLU(negative_slope)))
            previous = width
        self.layers = nn.ModuleList(layers)
        self.output = nn.Sequential(
            nn.Conv1d(sum(channels), out_channels, 1, bias=False), nn.GroupNorm(norm_groups, out_channels),
            nn.LeakyReLU(negative_slope))

    def forward(self, features: Tensor, centres: Tensor) -> Tensor:
        """features (B, G, C_in), centres (B, G, 3) -> (B, G, out_channels)."""
        batch, groups, _ = features.shape
        _, neighbours = knn(centres, centres, min(self.k, groups))  # (B, G, k), self first
        flat = (neighbours + groups * torch.arange(batch, device=features.device).view(-1, 1, 1)).view(-1)
        x = self.input_trans(features.transpose(1, 2))  # (B, C, G)
        outputs = []
        for layer in self.layers:
            channels = x.shape[1]
            rows = x.transpose(1, 2).reshape(batch * groups, channels)
            neighbour = rows[flat].view(batch, groups, -1, channels).permute(0, 3, 1, 2)  # (B, C, G, k)
            centre = x.unsqueeze(-1).expand_as(neighbour)
            x = layer(torch.cat([neighbour - centre, centre], dim=1)).amax(dim=-1)
            outputs.append(x)
        return self.output(torch.cat(outputs, dim=1)).transpose(1, 2)


class FoldingDecoder(nn.Module):
    """FoldingNet-style patch decoder (ACT / Point-BERT's ``Decoder``).

    A feature (B, G, C) becomes `num_fine // grid²` coarse points through an MLP; every coarse
    point is folded into a grid x grid square of 2D seeds (spacing `seed_scale`) by a shared point
    MLP on [feature, seed, coarse point], whose output is added to the coarse point.
    """

    def __init__(self, in_channels: int, num_fine: int = 32, grid: int = 2, hidden: int = 1024,
                 fold_channels: int = 512, seed_scale: float = 0.05):
        super().__init__()
        if num_fine % (grid * grid):
            raise ValueError(f"num_fine {num_fine} is not a multiple of grid² = {grid * grid}")
        self.num_fine, self.grid = num_fine, grid
        self.num_coarse = num_fine // (grid * grid)
        self.mlp = nn.Sequential(
            nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True), nn.Linear(hidden, 3 * self.num_coarse))
        self.final_conv = nn.Sequential(
            nn.Conv1d(in_channels + 3 + 2, fold_channels, 1), nn.BatchNorm1d(fold_channels), nn.ReLU(inplace=True),
            nn.Conv1d(fold_channels, fold_channels, 1), nn.BatchNorm1d(fold_channels), nn.ReLU(inplace=True),
            nn.Conv1d(fold_channels, 3, 1))
        steps = torch.linspace(-seed_scale, seed_scale, grid)
        seed = torch.stack([steps.view(1, grid).expand(grid, grid).reshape(-1),
                            steps.view(grid, 1).expand(grid, grid).reshape(-1)])  # (2, grid²)
        self.register_buffer("folding_seed", seed, persistent=False)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """features (B, G, C) -> (coarse (B, G, num_fine // grid², 3), fine (B, G, num_fine, 3))."""
        batch, groups, channels = features.shape
        rows = features.reshape(batch * groups, channels)
        coarse = self.mlp(rows).view(-1, self.num_coarse, 3)
        cells = self.grid * self.grid
        centre = coarse.unsqueeze(2).expand(-1, -1, cells, -1).reshape(-1, self.num_fine, 3).transpose(1, 2)
        seed = self.folding_seed.unsqueeze(1).expand(-1, self.num_coarse, -1).reshape(1, 2, self.num_fine)
        feat = torch.cat([rows.unsqueeze(2).expand(-1, -1, self.num_fine),
                          seed.expand(rows.shape[0], -1, -1).to(rows.dtype), centre], dim=1)
        fine = self.final_conv(feat) + centre
        return (coarse.view(batch, groups, self.num_coarse, 3),
                fine.transpose(1, 2).reshape(batch, groups, self.num_fine, 3))


@dataclass
class AutoencoderOutput:
    """What a stage-I forward pass produces; `autoencoder_losses` scores it."""

    patches: Tensor  # (B, G, K, 3) recentred input patches
    centres: Tensor  # (B, G, 3)
    logits: Tensor  # (B, G, num_tokens)
    coarse: Tensor  # (B, G, K // grid², 3)
    fine: Tensor  # (B, G, K, 3)


def autoencoder_losses(out: AutoencoderOutput) -> tuple[Tensor, Tensor]:
    """(reconstruction, kl): Chamfer-L1 of coarse and of fine points against each patch (summed),
    and `kl_to_uniform` of the code logits. The total is reconstruction + weight * kl."""
    reconstruction = patch_chamfer(out.coarse, out.patches, "l1") + patch_chamfer(out.fine, out.patches, "l1")
    return reconstruction, kl_to_uniform(out.logits)


class ACTAutoencoder(nn.Module):
    """ACT stage I: a discrete-VAE-style point autoencoder whose core is a frozen, prompt-tuned
    image Transformer. Only the embedding, graph convolutions, codebook, prompts, projections,
    the teacher's 3D position MLP and the decoder train.

    `teacher` is a loaded `VisionTransformer` (`pptkit.models.teacher_weights.load_teacher`);
    its blocks and final norm are used, and left out of `state_dict()`. Defaults are ACT's
    (64 patches of 32 points, 384-wide tokens, 8,192 codes, 64 VPT-deep prompts).
    """

    def __init__(self, teacher: VisionTransformer, num_groups: int = 64, group_size: int = 32,
                 encoder_dim: int = 384, num_tokens: int = 8192, token_dim: int = 384,
                 decoder_dim: int = 384, graph_k: int = 4, graph_input_channels: int = 128,
                 graph_channels: Sequence[int] = (256, 512, 512, 1024), graph_norm_groups: int = 4,
                 num_prompts: int = 64, prompt_dropout: float = 0.1, teacher_pos_hidden: int = 128,
                 project_equal_widths: bool = True, fold_grid: int = 2, fold_hidden: int = 1024,
                 fold_channels: int = 512, fold_seed_scale: float = 0.05,
                 embed_first_channels: tuple[int, int] = (128, 256), embed_second_hidden: int = 512):
        super().__init__()
        self.num_groups, self.group_size, self.latent_dim = num_groups, group_size, decoder_dim
        self.embed = MiniPointNet(encoder_dim, tuple(embed_first_channels), embed_second_hidden)
        graph = dict(k=graph_k, input_channels=graph_input_channels, channels=tuple(graph_channels),
                     norm_groups=graph_norm_groups)
        self.graph_in = GraphConv(encoder_dim, num_tokens, **graph)
        self.codebook = nn.Parameter(torch.randn(num_tokens, token_dim))
        self.teacher = PromptedTeacher(teacher, token_dim, token_dim, num_prompts, prompt_dropout,
                                       teacher_pos_hidden, project_equal_widths)
        self.graph_out = GraphConv(token_dim, decoder_dim, **graph)
        self.decoder = FoldingDecoder(decoder_dim, group_size, fold_grid, fold_hidden, fold_channels,
                                      fold_seed_scale)
        omit_from_state_dict(self, ("teacher.blocks.", "teacher.norm."))

    def group(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points (B, N, 3) -> (patches (B, G, K, 3), centres (B, G, 3))."""
        return group_patches(points, self.num_groups, self.group_size)

    def code_logits(self, patches: Tensor, centres: Tensor) -> Tensor:
        """(B, G, num_tokens) logits of each patch's code."""
        return self.graph_in(self.embed(patches), centres)

    def decode_codes(self, codes: Tensor, centres: Tensor) -> Tensor:
        """Code embeddings (B, G, token_dim) -> latent features (B, G, decoder_dim): the
        prompted teacher, then the second graph convolution."""
        return self.graph_out(self.teacher(codes, centres), centres)

    def forward(self, points: Tensor, temperature: float) -> AutoencoderOutput:
        """Reconstruct every patch through soft Gumbel-softmax codes at `temperature`."""
        patches, centres = self.group(points)
        logits = self.code_logits(patches, centres)
        soft = F.gumbel_softmax(logits.float(), tau=temperature, hard=False, dim=-1)
        latent = self.decode_codes(soft.to(self.codebook.dtype) @ self.codebook, centres)
        coarse, fine = self.decoder(latent)
        return AutoencoderOutput(patches, centres, logits, coarse, fine)

    def latent(self, patches: Tensor, centres: Tensor, codes: TargetCodes = "sample") -> Tensor:
        """Latent features (B, G, decoder_dim) of given patches: ACT stage II's targets.

        `codes="sample"` draws each patch's code from softmax(logits) (the reference's hard
        Gumbel-softmax at temperature 1); `"argmax"` takes the most likely code.
        """
        logits = self.code_logits(patches, centres).float()
        if codes == "sample":
            logits = logits - torch.empty_like(logits).exponential_().log()  # + Gumbel noise
        elif codes != "argmax":
            raise ValueError(f"codes must be 'sample' or 'argmax', got {codes!r}")
        return self.decode_codes(self.codebook[logits.argmax(dim=-1)], centres)


# --- stage II and the baseline ---------------------------------------------------------------


class MaskedDecoder(nn.Module):
    """Mask tokens after the visible tokens, a position MLP of every centre added before each
    pre-LN block, and the final LayerNorm of the masked tokens' outputs (Point-MAE / ACT's
    ``TransformerDecoder`` with its mask token and ``decoder_pos_embed``; Xavier-uniform linear
    weights, as there)."""

    def __init__(self, embed_dim: int = 384, depth: int = 2, num_heads: int = 6, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.1, pos_hidden: int = 128, qkv_bias: bool = False):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Sequential(nn.Linear(3, pos_hidden), nn.GELU(), nn.Linear(pos_hidden, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=rate) for rate in rates)
        self.norm = nn.LayerNorm(embed_dim)
        for module in [*self.blocks.modules(), self.norm]:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, visible: Tensor, visible_centres: Tensor, masked_centres: Tensor) -> Tensor:
        """visible tokens (B, V, C) at (B, V, 3), masked centres (B, M, 3) -> (B, M, C)."""
        count = masked_centres.shape[1]
        x = torch.cat([visible, self.mask_token.expand(visible.shape[0], count, -1)], dim=1)
        pos = self.pos_embed(torch.cat([visible_centres, masked_centres], dim=1))
        for block in self.blocks:
            x = block(x + pos)
        return self.norm(x[:, -count:])


class ACTDistillation(nn.Module):
    """ACT stage II: masked modelling of the frozen stage-I model's latent features.

    `encoder` is the student (what `pptkit finetune` adapts); `target` is a trained
    `ACTAutoencoder`, frozen here (no gradients, always in eval mode, left out of
    `state_dict()`). The student encodes the visible patches (cls token included, dropped
    after the encoder), the decoder fills in the masked ones, a linear head maps them to the
    target's width. Defaults: mask ratio 0.8 ("rand"), 2 decoder blocks of 6 heads.
    """

    def __init__(self, encoder: PointTransformerEncoder, target: ACTAutoencoder, mask_ratio: float = 0.8,
                 mask_type: MaskType = "rand", decoder_depth: int = 2, decoder_num_heads: int = 6,
                 decoder_drop_path: float = 0.1, target_codes: TargetCodes = "sample"):
        super().__init__()
        if (encoder.num_groups, encoder.group_size) != (target.num_groups, target.group_size):
            raise ValueError(f"the student's patches ({encoder.num_groups} x {encoder.group_size}) differ "
                             f"from the stage-I model's ({target.num_groups} x {target.group_size})")
        _check_mask(encoder.num_groups, mask_ratio)
        self.mask_ratio, self.mask_type, self.target_codes = mask_ratio, mask_type, target_codes
        self.encoder = encoder
        self.decoder = MaskedDecoder(encoder.embed_dim, decoder_depth, decoder_num_heads,
                                     drop_path_rate=decoder_drop_path)
        self.head = nn.Linear(encoder.embed_dim, target.latent_dim)
        self.target = target
        for parameter in target.parameters():
            parameter.requires_grad_(False)
        omit_from_state_dict(self, ("target.",))
        self.train()

    def train(self, mode: bool = True) -> ACTDistillation:
        super().train(mode)
        self.target.eval()  # the frozen stage-I model never runs dropout or updates BatchNorm
        return self

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points (B, N, 3) -> (predicted, target) latent features of the masked patches, (B, M, D)."""
        patches, centres = self.encoder.group(points)
        mask = draw_mask(centres, self.mask_ratio, self.mask_type)
        visible_tokens, _ = split_by_mask(self.encoder.embed(patches), mask)
        visible_centres, masked_centres = split_by_mask(centres, mask)
        visible = self.encoder.forward_tokens(visible_tokens, visible_centres, with_cls=True)[:, 1:]
        prediction = self.head(self.decoder(visible, visible_centres, masked_centres))
        with torch.no_grad():
            target = self.target.latent(patches, centres, self.target_codes)
        return prediction, split_by_mask(target, mask)[1]


class PointMAE(nn.Module):
    """Point-MAE (Pang et al., ECCV 2022): masked patch reconstruction, the baseline ACT compares
    with. The student encodes the visible patches without a cls token (as Point-MAE's
    pretraining encoder); a linear head predicts each masked patch's K points. Defaults: mask
    ratio 0.6 ("rand"), 4 decoder blocks of 6 heads."""

    def __init__(self, encoder: PointTransformerEncoder, mask_ratio: float = 0.6, mask_type: MaskType = "rand",
                 decoder_depth: int = 4, decoder_num_heads: int = 6, decoder_drop_path: float = 0.1):
        super().__init__()
        _check_mask(encoder.num_groups, mask_ratio)
        self.mask_ratio, self.mask_type = mask_ratio, mask_type
        self.encoder = encoder
        self.decoder = MaskedDecoder(encoder.embed_dim, decoder_depth, decoder_num_heads,
                                     drop_path_rate=decoder_drop_path)
        self.head = nn.Linear(encoder.embed_dim, 3 * encoder.group_size)

    def forward(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points (B, N, 3) -> (predicted, true) masked patches, each (B, M, K, 3), recentred."""
        patches, centres = self.encoder.group(points)
        mask = draw_mask(centres, self.mask_ratio, self.mask_type)
        visible_tokens, _ = split_by_mask(self.encoder.embed(patches), mask)
        visible_centres, masked_centres = split_by_mask(centres, mask)
        visible = self.encoder.forward_tokens(visible_tokens, visible_centres, with_cls=False)
        decoded = self.decoder(visible, visible_centres, masked_centres)
        prediction = self.head(decoded).view(*decoded.shape[:2], self.encoder.group_size, 3)
        return prediction, split_by_mask(patches, mask)[1]


def _check_mask(num_groups: int, ratio: float) -> None:
    masked = num_masked(num_groups, ratio)
    if not 1 <= masked < num_groups:
        raise ValueError(f"mask ratio {ratio} masks {masked} of {num_groups} patches; "
                         "at least one must be masked and one visible")
