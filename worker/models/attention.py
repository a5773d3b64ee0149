"""Multi-head attention (Vaswani et al., 2017) on torch's fused scaled-dot-product kernel.

`Attention` works on token sequences (B, N, C) and serves as self- or cross-attention in
transformer blocks. `SpatialSelfAttention` is the single-block attention of UNet2D / VAE
levels: GroupNorm, self-attention over the H*W positions, residual add.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """softmax(Q K^T / sqrt(d)) V over `heads` heads of size `dim_head`.

    Args:
        query_dim: channels of the queries (and of the output unless `out_dim`).
        cross_attention_dim: channels of the context; None means self-attention.
        bias: whether the q/k/v projections have a bias (False in SD transformer blocks).
        out_bias: whether the output projection has a bias.
    """

    def __init__(self, query_dim: int, cross_attention_dim: int | None = None, heads: int = 8,
                 dim_head: int = 64, bias: bool = False, out_bias: bool = True,
                 out_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = cross_attention_dim or query_dim
        self.heads = heads
        self.is_cross_attention = cross_attention_dim is not None
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, out_dim or query_dim, bias=out_bias), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, query_dim), context (B, M, context_dim) -> (B, N, out_dim)."""
        context = x if context is None else context
        q = self._split_heads(self.to_q(x))  # (B, heads, N, d)
        k = self._split_heads(self.to_k(context))  # (B, heads, M, d)
        v = self._split_heads(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        B, _, N, _ = out.shape
        out = out.transpose(1, 2).reshape(B, N, -1)  # (B, N, heads*d)
        return self.to_out[1](self.to_out[0](out))

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        return t.view(B, N, self.heads, -1).transpose(1, 2)


class SpatialSelfAttention(Attention):
    """(B, C, H, W) -> (B, C, H, W): x + Attention(GroupNorm(x)) over the H*W positions, / rescale.

    Old checkpoints name the projections `query/key/value/proj_attn`; `ModelMixin` renames them
    on load for modules flagged with `legacy_attention_names`.
    """

    legacy_attention_names = True

    def __init__(self, channels: int, dim_head: int | None = None, norm_groups: int | None = 32,
                 eps: float = 1e-6, rescale_output_factor: float = 1.0):
        dim_head = dim_head or channels
        super().__init__(channels, heads=channels // dim_head, dim_head=dim_head, bias=True)
        self.group_norm = nn.GroupNorm(norm_groups, channels, eps=eps, affine=True) if norm_groups else None
        self.rescale_output_factor = rescale_output_factor

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.group_norm(x) if self.group_norm is not None else x
        tokens = h.view(B, C, H * W).transpose(1, 2)  # (B, HW, C)
        out = super().forward(tokens).transpose(1, 2).reshape(B, C, H, W)
        out = out + x
        return out / self.rescale_output_factor if self.rescale_output_factor != 1.0 else out
