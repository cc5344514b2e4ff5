"""A DINOv2-style Vision Transformer and the prompt-tuned 3D teacher that ACT builds from it.

ACT (Dong et al., ICLR 2023) turns a frozen, pretrained 2D image Transformer into the core of a
3D autoencoder: point-patch tokens go through the image model's Transformer blocks and final
norm (its patch embedding and 2D position table are not used), with a linear map in and out
where widths differ, a 3D position MLP of the patch centres added before every block, and
VPT-deep prompt tokens (Jia et al., 2022) as the only adaptation inside the frozen blocks.

`VisionTransformer` is the whole image model (patch embedding, class token, optional register
tokens, learned position table, pre-LN blocks with LayerScale, final norm), so that extracted
weights can be checked against the original network on images. Its state-dict keys follow
timm's `VisionTransformer` layout (`cls_token`, `pos_embed`, `patch_embed.proj.*`,
`blocks.N.{norm1,attn.qkv,attn.proj,ls1,norm2,mlp.fc1,mlp.fc2,ls2}.*`, `norm.*`), which is
also the layout of `--teacher PATH.safetensors` files. Nothing here reads files: weights come
from `pptkit.models.teacher_weights`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    """Architecture of a Vision Transformer; the defaults are DINOv2 ViT-S/14."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_hidden_dim: int = 1536
    patch_size: int = 14
    in_chans: int = 3
    pos_grid: int = 37  # side of the learned position table (pretraining image size / patch size)
    num_register_tokens: int = 0
    pos_embed_class: bool = True  # the position table has a row for the class token
    layer_scale_init: float | None = 1e-5  # None: blocks without LayerScale
    qkv_bias: bool = True
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.num_register_tokens and self.pos_embed_class:
            # timm's register models (DINOv2-reg) give positions to patches only.
            raise ValueError("register tokens are supported only with pos_embed_class=False")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ViTConfig:
        """Strict inverse of `to_dict`: an unknown field raises KeyError naming it."""
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise KeyError(unknown[0])
        return cls(**values)


class PatchEmbed(nn.Module):
    """Non-overlapping square patches -> tokens, by a strided convolution."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, (H // p) * (W // p), embed_dim), row-major over the patch grid."""
        return self.proj(images).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class Mlp(nn.Module):
    """Two-layer feed-forward network with exact (erf) GELU."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    """Learned per-channel scale of a residual branch (CaiT; used by DINOv2)."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch per sample during training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-LN Transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_hidden_dim: int,
        qkv_bias: bool = True,
        layer_scale_init: float | None = None,
        norm_eps: float = 1e-6,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.ls1 = nn.Identity() if layer_scale_init is None else LayerScale(dim, layer_scale_init)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, mlp_hidden_dim)
        self.ls2 = nn.Identity() if layer_scale_init is None else LayerScale(dim, layer_scale_init)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class VisionTransformer(nn.Module):
    """Image ViT returning every token after the final norm: (B, 1 + registers + patches, C)."""

    def __init__(self, config: ViTConfig = ViTConfig(), drop_path_rate: float = 0.0):
        super().__init__()
        self.config = config
        dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.in_chans, dim, config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if config.num_register_tokens:
            self.reg_token = nn.Parameter(torch.zeros(1, config.num_register_tokens, dim))
        pos_rows = config.pos_grid**2 + int(config.pos_embed_class)
        self.pos_embed = nn.Parameter(torch.zeros(1, pos_rows, dim))
        rates = [drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nn.ModuleList(
            Block(dim, config.num_heads, config.mlp_hidden_dim, config.qkv_bias,
                  config.layer_scale_init, config.norm_eps, rate)
            for rate in rates
        )
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        for parameter in (self.cls_token, self.pos_embed):
            nn.init.trunc_normal_(parameter, std=0.02)
        if config.num_register_tokens:
            nn.init.trunc_normal_(self.reg_token, std=0.02)

    def patch_positions(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position rows of a grid_h x grid_w patch grid: the learned table, resized bicubically
        (no antialiasing, half-pixel centres, as DINOv2's exported graph does) when it differs."""
        table = self.pos_embed[:, int(self.config.pos_embed_class):]
        side = self.config.pos_grid
        if (grid_h, grid_w) == (side, side):
            return table
        grid = table.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1).to(table.dtype)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens before the first block: [cls, registers, patches] with positions added."""
        patch = self.config.patch_size
        grid_h, grid_w = images.shape[-2] // patch, images.shape[-1] // patch
        patches = self.patch_embed(images) + self.patch_positions(grid_h, grid_w)
        cls = self.cls_token.expand(images.shape[0], -1, -1)
        if self.config.pos_embed_class:
            cls = cls + self.pos_embed[:, :1]
        prefix = [cls]
        if self.config.num_register_tokens:
            prefix.append(self.reg_token.expand(images.shape[0], -1, -1))
        return torch.cat([*prefix, patches], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class PromptedTeacher(nn.Module):
    """A frozen image ViT's blocks and final norm applied to point-patch tokens, tuned by
    VPT-deep prompts (ACT stage I).

    Before every block the 3D position embedding of the patch centres is added to the point
    tokens, and each prompt token gets its own learned position. Block 0 sees its prompts
    prepended to the point tokens; each later block replaces the previous block's prompt
    outputs with its own prompts; the prompt outputs are dropped after the final norm.
    The teacher's parameters never get gradients and its modules stay in eval mode; what
    trains is the projections, the position MLP and the prompts.
    """

    def __init__(
        self,
        teacher: VisionTransformer,
        in_dim: int,
        out_dim: int,
        num_prompts: int = 32,
        prompt_dropout: float = 0.1,
        pos_hidden_dim: int = 128,
        project_equal_widths: bool = False,
    ):
        """`project_equal_widths=True` keeps the linear maps in and out even where the widths
        match (ACT's reference code always has them); by default they are identities then."""
        super().__init__()
        width = teacher.config.embed_dim
        self.num_prompts = num_prompts
        self.blocks = teacher.blocks
        self.norm = teacher.norm
        for parameter in [*self.blocks.parameters(), *self.norm.parameters()]:
            parameter.requires_grad_(False)
        self.proj_in = (nn.Linear(in_dim, width) if in_dim != width or project_equal_widths
                        else nn.Identity())
        self.proj_out = (nn.Linear(width, out_dim) if out_dim != width or project_equal_widths
                         else nn.Identity())
        self.pos_embed = nn.Sequential(
            nn.Linear(3, pos_hidden_dim), nn.GELU(), nn.Linear(pos_hidden_dim, width)
        )
        depth = len(self.blocks)
        self.prompts = nn.Parameter(torch.zeros(depth, num_prompts, width))
        self.prompt_pos = nn.Parameter(torch.zeros(depth, num_prompts, width))
        nn.init.trunc_normal_(self.prompts, std=0.02)
        nn.init.trunc_normal_(self.prompt_pos, std=0.02)
        self.prompt_dropout = nn.Dropout(prompt_dropout)
        self.train()

    def train(self, mode: bool = True) -> PromptedTeacher:
        super().train(mode)
        self.blocks.eval()  # the frozen teacher never runs dropout or drop-path
        self.norm.eval()
        return self

    def forward(self, tokens: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """tokens (B, T, in_dim), patch centres (B, T, 3) -> (B, T, out_dim)."""
        x = self.proj_in(tokens)
        positions = self.pos_embed(centres)
        batch, count = x.shape[0], self.num_prompts
        for index, block in enumerate(self.blocks):
            prompts = self.prompt_dropout(self.prompts[index].expand(batch, -1, -1))
            x = torch.cat([prompts, x if index == 0 else x[:, count:]], dim=1)
            prompt_pos = self.prompt_pos[index].expand(batch, -1, -1)
            x = block(x + torch.cat([prompt_pos, positions], dim=1))
        return self.proj_out(self.norm(x)[:, count:])

