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
        self.fused_projections = False
        self.processor: AttnProcessor = AttnProcessor2_0()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, query_dim), context (B, M, context_dim) -> (B, N, out_dim)."""
        return self.processor(self, x, context, attention_mask)

    def project_qkv(self, x: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """q (B, heads, N, d), k and v (B, heads, M, d); one matmul each with fused projections."""
        if self.fused_projections and context is None and hasattr(self, "to_qkv"):
            q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        elif self.fused_projections and context is not None and hasattr(self, "to_kv"):
            q, (k, v) = self.to_q(x), self.to_kv(context).chunk(2, dim=-1)
        else:
            context = x if context is None else context
            q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def merge_heads(self, out: torch.Tensor) -> torch.Tensor:
        """(B, heads, N, d) -> output projection of (B, N, heads*d)."""
        B, _, N, _ = out.shape
        out = out.transpose(1, 2).reshape(B, N, -1)
        return self.to_out[1](self.to_out[0](out))

    # Diffusers' processor switches (`ModelMixin.set_attn_processor` calls these per layer).
    def set_processor(self, processor: "AttnProcessor") -> None:
        self.processor = processor

    def get_processor(self, return_deprecated_lora: bool = False) -> "AttnProcessor":
        return self.processor

    @torch.no_grad()
    def fuse_projections(self, fuse: bool = True) -> None:
        """Concatenate q/k/v (self-attention) or k/v (cross-attention) weights into one Linear."""
        names = ["to_k", "to_v"] if self.is_cross_attention else ["to_q", "to_k", "to_v"]
        layers = [getattr(self, n) for n in names]
        fused = nn.Linear(layers[0].in_features, sum(lin.out_features for lin in layers),
                          bias=layers[0].bias is not None, device=layers[0].weight.device, dtype=layers[0].weight.dtype)
        fused.weight.copy_(torch.cat([lin.weight for lin in layers]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([lin.bias for lin in layers]))
        setattr(self, "to_kv" if self.is_cross_attention else "to_qkv", fused)
        self.fused_projections = fuse

    def unfuse_projections(self) -> None:
        for name in ("to_qkv", "to_kv"):
            if hasattr(self, name):
                delattr(self, name)
        self.fused_projections = False

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        B, N, _ = t.shape
        return t.view(B, N, self.heads, -1).transpose(1, 2)


class AttnProcessor:
    """Attention as written in the paper: softmax(Q K^T / sqrt(d) + mask) V, materialising the
    (N, M) score matrix (Diffusers' default after `set_default_attn_processor`)."""

    def __call__(self, attn: Attention, x: torch.Tensor, context: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        q, k, v = attn.project_qkv(x, context)
        scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # (B, heads, N, M)
        if attention_mask is not None:
            scores = scores + attention_mask
        return attn.merge_heads(scores.softmax(dim=-1).to(v.dtype) @ v)


class AttnProcessor2_0(AttnProcessor):
    """The same attention through torch's fused `scaled_dot_product_attention` kernel (default)."""

    def __call__(self, attn: Attention, x: torch.Tensor, context: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        q, k, v = attn.project_qkv(x, context)
        return attn.merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask))


# Diffusers' names for processors that compute the same thing here.
FusedAttnProcessor2_0 = AttnProcessor2_0


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
