"""Point-patch Transformer encoder (the backbone of Point-BERT, Point-MAE, ACT and PointGST).

points (B, N, 3) -> `group_patches` (FPS centres, the K nearest points of each, recentred)
-> `MiniPointNet` token per patch (B, G, C) -> cls token prepended -> pre-LN Transformer
blocks, the MLP embedding of each token's centre added before every block -> LayerNorm.

Hooks for the stages built on it:
- `PointTransformerEncoder.forward_tokens` runs the blocks on any token subset with its
  centres, so a masked student (ACT / Point-MAE) feeds visible tokens only.
- `Block.forward(x, ffn_side)` takes a side branch parallel to the feed-forward branch, placed
  as PointGST's adapter is in its released code: it reads the residual stream after the
  attention branch (before ``norm2``) and its output is added after the feed-forward residual,
  without drop-path: ``x = x + dp(attn(norm1(x))); s = side(x); x = x + dp(mlp(norm2(x))) + s``.

State-dict layout (every pretrain checkpoint stores the encoder under the key "encoder";
finetune loads it), for width C and depth D::

    patch_embed.first_conv.0.{weight,bias}     Conv1d(3, 128, 1)
    patch_embed.first_conv.1.*                 BatchNorm1d(128) (weight, bias, running_mean,
                                               running_var, num_batches_tracked)
    patch_embed.first_conv.3.{weight,bias}     Conv1d(128, 256, 1)
    patch_embed.second_conv.0.{weight,bias}    Conv1d(512, 512, 1)
    patch_embed.second_conv.1.*                BatchNorm1d(512)
    patch_embed.second_conv.3.{weight,bias}    Conv1d(512, C, 1)
    pos_embed.0.{weight,bias}                  Linear(3, 128)
    pos_embed.2.{weight,bias}                  Linear(128, C)
    cls_token, cls_pos                         (1, 1, C)
    blocks.{i}.norm1.{weight,bias}             LayerNorm(C), i in 0..D-1
    blocks.{i}.attn.qkv.weight                 Linear(C, 3C) (+ .bias when qkv_bias)
    blocks.{i}.attn.proj.{weight,bias}         Linear(C, C)
    blocks.{i}.norm2.{weight,bias}             LayerNorm(C)
    blocks.{i}.mlp.fc1.{weight,bias}           Linear(C, mlp_ratio·C)
    blocks.{i}.mlp.fc2.{weight,bias}           Linear(mlp_ratio·C, C)
    norm.{weight,bias}                         LayerNorm(C)

The reference code (Point-MAE's MaskTransformer / PointTransformer, ACT's
VisableOnlyMaskTransformer) names the same tensors, with the same shapes, ``encoder.*`` (for
``patch_embed.*``) and ``blocks.blocks.{i}.*`` (for ``blocks.{i}.*``), the rest alike;
`convert_reference_state_dict` maps its checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pptkit.models.point_ops import group_patches

FfnSide = Callable[[Tensor], Tensor]


class MiniPointNet(nn.Module):
    """One token per patch, as Point-MAE's Encoder: a shared point MLP (3 -> 128 -> 256),
    max-pool, the pooled feature concatenated to every point (-> 512), a second shared MLP
    (512 -> 512 -> C), max-pool. Conv1d with kernel 1 keeps the reference's weight shapes."""

    def __init__(self, out_channels: int = 384, first_channels: tuple[int, int] = (128, 256),
                 second_hidden: int = 512):
        super().__init__()
        hidden, mid = first_channels
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, hidden, 1), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Conv1d(hidden, mid, 1))
        self.second_conv = nn.Sequential(
            nn.Conv1d(2 * mid, second_hidden, 1), nn.BatchNorm1d(second_hidden), nn.ReLU(inplace=True),
            nn.Conv1d(second_hidden, out_channels, 1))
        self.out_channels = out_channels

    def forward(self, patches: Tensor) -> Tensor:
        """patches (B, G, K, 3) -> tokens (B, G, C)."""
        batch, groups, size, _ = patches.shape
        feat = self.first_conv(patches.reshape(batch * groups, size, 3).transpose(1, 2))
        pooled = feat.amax(dim=2, keepdim=True)
        feat = self.second_conv(torch.cat([pooled.expand(-1, -1, size), feat], dim=1))
        return feat.amax(dim=2).view(batch, groups, self.out_channels)


class DropPath(nn.Module):
    """Stochastic depth: zero a residual branch for a random subset of samples while training,
    scaling the kept ones by 1 / keep probability; the identity in eval mode."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must lie in [0, 1), got {drop_prob}")
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class Attention(nn.Module):
    """Multi-head self-attention with one qkv projection (scale 1/sqrt(head width))."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, dim)))


class Mlp(nn.Module):
    """Feed-forward branch: Linear -> GELU -> dropout -> Linear -> dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    """Pre-LN Transformer block with an optional side branch beside the feed-forward branch
    (see the module docstring for where it attaches)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x: Tensor, ffn_side: FfnSide | None = None) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        side = None if ffn_side is None else ffn_side(x)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x if side is None else x + side


def cls_max_pool(tokens: Tensor) -> Tensor:
    """[cls token ‖ max over patch tokens] (B, 2C) of encoder output (B, 1 + G, C): the
    classification / probing feature of Point-MAE, ACT and PointGST."""
    return torch.cat([tokens[:, 0], tokens[:, 1:].amax(dim=1)], dim=-1)


class PointTransformerEncoder(nn.Module):
    """The point-patch Transformer encoder; key layout in the module docstring.

    Defaults are the paper scale (width 384, 12 blocks, 6 heads, drop-path rising linearly
    from 0 to 0.1 over depth, 64 patches of 32 points for 1,024-point objects; use
    ``num_groups=128`` for 2,048 points). Initialisation follows the reference: truncated
    normal (std 0.02) for linear and conv weights and for the cls tokens, zero biases.
    """

    def __init__(self, embed_dim: int = 384, depth: int = 12, num_heads: int = 6,
                 mlp_ratio: float = 4.0, qkv_bias: bool = False, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1, num_groups: int = 64,
                 group_size: int = 32, pos_hidden: int = 128,
                 embed_first_channels: tuple[int, int] = (128, 256), embed_second_hidden: int = 512):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.embed_dim = embed_dim
        self.num_groups = num_groups
        self.group_size = group_size
        self.patch_embed = MiniPointNet(embed_dim, embed_first_channels, embed_second_hidden)
        self.pos_embed = nn.Sequential(nn.Linear(3, pos_hidden), nn.GELU(), nn.Linear(pos_hidden, embed_dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.cls_pos = nn.Parameter(torch.zeros(1, 1, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rate) for rate in rates)
        self.norm = nn.LayerNorm(embed_dim)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    def group(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """points (B, N, 3) -> (patches (B, G, K, 3) recentred, centres (B, G, 3))."""
        return group_patches(points, self.num_groups, self.group_size)

    def embed(self, patches: Tensor) -> Tensor:
        """patches (B, G, K, 3) -> tokens (B, G, C)."""
        return self.patch_embed(patches)

    def forward_tokens(self, tokens: Tensor, centres: Tensor,
                       ffn_sides: Sequence[FfnSide | None] | None = None, with_cls: bool = True) -> Tensor:
        """Run the blocks on tokens (B, T, C) at centres (B, T, 3) -> (B, 1 + T, C) with the cls
        token first (or (B, T, C) when ``with_cls`` is False), after the final LayerNorm.

        ``ffn_sides``: one side branch (or None) per block, each called with that block's whole
        token sequence (cls included) after the attention residual.
        """
        if tokens.ndim != 3 or tokens.shape[-1] != self.embed_dim:
            raise ValueError(f"tokens must have shape (B, T, {self.embed_dim}), got {tuple(tokens.shape)}")
        if centres.shape != (*tokens.shape[:2], 3):
            raise ValueError(f"centres must have shape {(*tokens.shape[:2], 3)}, got {tuple(centres.shape)}")
        if ffn_sides is None:
            ffn_sides = [None] * len(self.blocks)
        elif len(ffn_sides) != len(self.blocks):
            raise ValueError(f"ffn_sides needs one entry per block ({len(self.blocks)}), got {len(ffn_sides)}")
        pos = self.pos_embed(centres)
        if with_cls:
            batch = tokens.shape[0]
            tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
            pos = torch.cat([self.cls_pos.expand(batch, -1, -1), pos], dim=1)
        x = tokens
        for block, side in zip(self.blocks, ffn_sides):
            x = block(x + pos, side)
        return self.norm(x)

    def forward(self, points: Tensor) -> Tensor:
        """points (B, N, 3) -> tokens (B, 1 + G, C), cls first."""
        patches, centres = self.group(points)
        return self.forward_tokens(self.embed(patches), centres)

    def features(self, points: Tensor) -> Tensor:
        """[cls ‖ max-pool over patch tokens] (B, 2C), for classification heads and probing."""
        return cls_max_pool(self(points))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


_REFERENCE_ENCODER_PREFIXES = ("ACT_encoder.", "MAE_encoder.")


def convert_reference_state_dict(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a Point-MAE / ACT checkpoint's encoder to pptkit's layout.

    Accepts the reference's ``base_model`` dict (or the whole checkpoint holding it): a
    pretraining model's (``MAE_encoder.*`` / ``ACT_encoder.*`` keys; everything else, such as
    decoders and teachers, is dropped) or a fine-tuned PointTransformer's (unprefixed keys;
    heads are dropped). A ``module.`` prefix (DataParallel) is removed. Point-MAE's pretraining
    encoder has no cls token: the result then lacks ``cls_token`` and ``cls_pos``, which the
    loader must initialise (load with ``strict=False`` and check that nothing else is missing).
    Raises ValueError when no encoder is found or the checkpoint projects the embedding width
    (``reduce_dim``, a layer this layout does not have).
    """
    if isinstance(state_dict.get("base_model"), Mapping):
        state_dict = state_dict["base_model"]
    names = {key.removeprefix("module.").removeprefix("base_model."): value for key, value in state_dict.items()}
    for prefix in _REFERENCE_ENCODER_PREFIXES:
        if any(name.startswith(prefix) for name in names):
            names = {name[len(prefix):]: value for name, value in names.items() if name.startswith(prefix)}
            break
    converted = {}
    for name, value in names.items():
        if name.startswith("reduce_dim."):
            raise ValueError(f"checkpoint key {name!r}: the reference projects its patch embedding to the "
                             "Transformer width; pptkit's encoder embeds straight to the width")
        if name.startswith("encoder."):
            converted["patch_embed." + name[len("encoder."):]] = value
        elif name.startswith("blocks.blocks."):
            converted["blocks." + name[len("blocks.blocks."):]] = value
        elif name.startswith(("pos_embed.", "norm.")) or name in ("cls_token", "cls_pos"):
            converted[name] = value
    if not any(name.startswith("blocks.0.") for name in converted):
        raise ValueError("no Point-MAE / ACT encoder found (expected keys like 'blocks.blocks.0.attn.qkv.weight')")
    return converted
