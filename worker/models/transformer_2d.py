"""The spatial transformer of latent diffusion (Rombach et al., 2022, "SpatialTransformer").

Feature map -> GroupNorm -> projection -> tokens -> N x (self-attn, cross-attn on text,
GEGLU feed-forward) -> projection back -> + input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from worker.models.attention import Attention


class GEGLU(nn.Module):
    """Gated GELU (Shazeer, 2020): a, g = proj(x).chunk(2); a * gelu(g). (B, N, dim) -> (B, N, inner)."""

    def __init__(self, dim: int, inner_dim: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim, inner_dim * 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        gelu = F.gelu(gate)  # a fresh buffer: without autograd, reuse it for the product
        return gelu.mul_(a) if not torch.is_grad_enabled() else a * gelu


class FeedForward(nn.Module):
    """GEGLU -> dropout -> linear; state-dict names `net.0.proj`, `net.2`."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class BasicTransformerBlock(nn.Module):
    """Pre-LayerNorm block: x += attn1(norm1(x)); x += attn2(norm2(x), text); x += ff(norm3(x)).

    With `only_cross_attention` the first attention also attends to the text instead of x.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int | None = None,
                 only_cross_attention: bool = False, dropout: float = 0.0, norm_eps: float = 1e-5):
        super().__init__()
        self.only_cross_attention = only_cross_attention
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn1 = Attention(dim, cross_attention_dim if only_cross_attention else None, heads, dim_head,
                               dropout=dropout)
        self.norm2 = self.attn2 = None
        if cross_attention_dim is not None:
            self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
            self.attn2 = Attention(dim, cross_attention_dim, heads, dim_head, dropout=dropout)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, dim), context (B, M, cross_attention_dim) -> (B, N, dim)."""
        x = _residual(self.attn1(self.norm1(x), context if self.only_cross_attention else None), x)
        if self.attn2 is not None:
            x = _residual(self.attn2(self.norm2(x), context, context_mask), x)
        return _residual(self.ff(self.norm3(x)), x)


class Transformer2DModel(nn.Module):
    """(B, C, H, W) + context (B, M, D) -> (B, C, H, W).

    Args:
        use_linear_projection: SD 2.x / SDXL project tokens with Linear layers after flattening;
            SD 1.x uses 1x1 convs before flattening. Both give the same math, different keys' shapes.
    """

    def __init__(self, num_attention_heads: int, attention_head_dim: int, in_channels: int,
                 num_layers: int = 1, cross_attention_dim: int | None = None, norm_num_groups: int = 32,
                 use_linear_projection: bool = False, only_cross_attention: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        inner = num_attention_heads * attention_head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6, affine=True)
        projection = _linear_projection if use_linear_projection else _conv_projection
        self.proj_in = projection(in_channels, inner)
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(inner, num_attention_heads, attention_head_dim, cross_attention_dim,
                                  only_cross_attention, dropout)
            for _ in range(num_layers)
        ])
        self.proj_out = projection(inner, in_channels)
        self.gradient_checkpointing = False  # recompute each block in the backward pass (training)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, _, H, W = x.shape
        h = self.norm(x)
        if not self.use_linear_projection:
            h = self.proj_in(h)
        tokens = h.permute(0, 2, 3, 1).reshape(B, H * W, h.shape[1])  # (B, HW, C')
        if self.use_linear_projection:
            tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                tokens = torch.utils.checkpoint.checkpoint(block, tokens, context, context_mask, use_reentrant=False)
            else:
                tokens = block(tokens, context, context_mask)
        if self.use_linear_projection:
            tokens = self.proj_out(tokens)
        h = tokens.reshape(B, H, W, tokens.shape[-1]).permute(0, 3, 1, 2)  # (B, C', H, W)
        if not self.use_linear_projection:
            h = self.proj_out(h.contiguous())
        return _residual(h, x)


def _residual(update: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x + update; without autograd the sum goes into `update` (a fresh layer output)."""
    return update.add_(x) if not torch.is_grad_enabled() and update.shape == x.shape else update + x


def _linear_projection(dim_in: int, dim_out: int) -> nn.Module:
    return nn.Linear(dim_in, dim_out)


def _conv_projection(dim_in: int, dim_out: int) -> nn.Module:
    return nn.Conv2d(dim_in, dim_out, kernel_size=1)
