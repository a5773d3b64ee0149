"""Multi-head attention (Vaswani et al., 2017) on torch's fused scaled-dot-product kernel.

`Attention` works on token sequences (B, N, C) and serves as self- or cross-attention in
transformer blocks. `SpatialSelfAttention` is the single-block attention of UNet2D / VAE
levels: GroupNorm, self-attention over the H*W positions, residual add.

The work is done by a processor, called as Diffusers calls its processors:
`processor(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)`, with the
attributes and helpers Diffusers' processors read (`heads`, `scale`, `group_norm`,
`residual_connection`, `rescale_output_factor`, `prepare_attention_mask`, `head_to_batch_dim`,
`get_attention_scores`, `batch_to_head_dim`, ...), so processors written for Diffusers run here.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

# Extra processor arguments of the model call under way (Diffusers' `cross_attention_kwargs`, less
# the LoRA `scale`). A model's forward sets them for its duration and every attention layer reads
# them, so they need no threading through the blocks; a context variable keeps concurrent calls
# (threads, tasks) apart. Recomputation by gradient checkpointing runs without them.
PROCESSOR_KWARGS: ContextVar[Mapping[str, Any]] = ContextVar("processor_kwargs", default={})


@contextmanager
def processor_kwargs(kwargs: Mapping[str, Any] | None) -> Iterator[None]:
    """Hand `kwargs` to every attention processor called inside the block."""
    token = PROCESSOR_KWARGS.set(dict(kwargs or {}))
    try:
        yield
    finally:
        PROCESSOR_KWARGS.reset(token)


@functools.lru_cache(maxsize=None)
def _accepted_keywords(processor_type: type) -> frozenset[str] | None:
    """Keywords a processor's `__call__` takes beyond the four positional ones; None: any (**kwargs)."""
    params = inspect.signature(processor_type.__call__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params) - {"self", "attn", "hidden_states", "encoder_hidden_states",
                                                   "attention_mask"}


def _call_kwargs(processor: Any, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The extra arguments a processor takes; others are dropped, as Diffusers drops them."""
    extra = {**PROCESSOR_KWARGS.get(), **kwargs}
    if not extra:
        return extra
    accepted = _accepted_keywords(type(processor))
    return extra if accepted is None else {k: v for k, v in extra.items() if k in accepted}


class Attention(nn.Module):
    """softmax(Q K^T / sqrt(d)) V over `heads` heads of size `dim_head`.

    Args:
        query_dim: channels of the queries (and of the output unless `out_dim`).
        cross_attention_dim: channels of the context; None means self-attention.
        bias: whether the q/k/v projections have a bias (False in SD transformer blocks).
        out_bias: whether the output projection has a bias.
    """

    # Features of Diffusers' Attention that Kiln's layers never use; processors read them.
    spatial_norm = norm_cross = norm_q = norm_k = None
    upcast_attention = upcast_softmax = False

    def __init__(self, query_dim: int, cross_attention_dim: int | None = None, heads: int = 8,
                 dim_head: int = 64, bias: bool = False, out_bias: bool = True,
                 out_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        inner_dim = heads * dim_head
        context_dim = cross_attention_dim or query_dim
        self.heads = heads
        self.scale = dim_head**-0.5
        self.inner_dim = inner_dim
        self.is_cross_attention = cross_attention_dim is not None
        self.group_norm: nn.GroupNorm | None = None
        self.residual_connection = False
        self.rescale_output_factor = 1.0
        self.to_q = nn.Linear(query_dim, inner_dim, bias=bias)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, out_dim or query_dim, bias=out_bias), nn.Dropout(dropout)])
        self.fused_projections = False
        self.processor: AttnProcessor = AttnProcessor2_0()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **cross_attention_kwargs) -> torch.Tensor:
        """x (B, N, query_dim) or (B, C, H, W), context (B, M, context_dim) -> x's shape (out_dim channels).

        `attention_mask`: additive bias (B, 1, M) (or (B, M)), 0 to keep a key, large negative to drop it.
        """
        return self.processor(self, x, context, attention_mask, **_call_kwargs(self.processor, cross_attention_kwargs))

    # ------------------------------------------------------------------ steps shared by processors
    def tokens_in(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) or (B, N, C) -> (B, N, C) tokens, group-normalised when the layer has a norm."""
        x = hidden_states
        if x.ndim == 4:
            B, C, H, W = x.shape
            x = x.view(B, C, H * W).transpose(1, 2)
        if self.group_norm is not None:
            x = self.group_norm(x.transpose(1, 2)).transpose(1, 2)
        return x

    def tokens_out(self, out: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        """Back to the input's layout, plus the residual (when the layer has one), / rescale factor."""
        if hidden_states.ndim == 4:
            out = out.transpose(1, 2).reshape(hidden_states.shape[0], -1, *hidden_states.shape[2:])
        if self.residual_connection:
            out = out + hidden_states
        return out / self.rescale_output_factor if self.rescale_output_factor != 1.0 else out

    def prepare_attention_mask(self, attention_mask: torch.Tensor | None, target_length: int, batch_size: int,
                               out_dim: int = 3) -> torch.Tensor | None:
        """Bias (B, 1, M) or (B, M) -> (B·heads, 1, M) (`out_dim=3`) or (B, heads, 1, M) (`out_dim=4`),
        right-padded with zeros to `target_length` keys."""
        if attention_mask is None:
            return None
        if attention_mask.shape[-1] < target_length:
            attention_mask = F.pad(attention_mask, (0, target_length - attention_mask.shape[-1]), value=0.0)
        if attention_mask.ndim == 2:
            attention_mask = attention_mask[:, None, :]
        if out_dim == 4:
            return attention_mask[:, None].repeat_interleave(self.heads, dim=1)
        if attention_mask.shape[0] < batch_size * self.heads:
            attention_mask = attention_mask.repeat_interleave(self.heads, dim=0)
        return attention_mask

    def head_to_batch_dim(self, tensor: torch.Tensor, out_dim: int = 3) -> torch.Tensor:
        """(B, N, heads·d) -> (B·heads, N, d) (`out_dim=3`) or (B, heads, N, d) (`out_dim=4`)."""
        B, N, _ = tensor.shape
        tensor = tensor.reshape(B, N, self.heads, -1).permute(0, 2, 1, 3)
        return tensor.reshape(B * self.heads, N, -1) if out_dim == 3 else tensor

    def batch_to_head_dim(self, tensor: torch.Tensor) -> torch.Tensor:
        """(B·heads, N, d) -> (B, N, heads·d)."""
        BH, N, d = tensor.shape
        return tensor.reshape(BH // self.heads, self.heads, N, d).permute(0, 2, 1, 3).reshape(BH // self.heads, N, -1)

    def get_attention_scores(self, query: torch.Tensor, key: torch.Tensor,
                             attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(q kᵀ · scale + mask): (B·heads, N, d), (B·heads, M, d) -> (B·heads, N, M)."""
        scores = torch.bmm(query, key.transpose(1, 2)) * self.scale
        if attention_mask is not None:
            scores = scores + attention_mask
        return scores.softmax(dim=-1).to(query.dtype)

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

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        x = attn.tokens_in(hidden_states)  # (B, N, C)
        q, k, v = attn.project_qkv(x, encoder_hidden_states)  # (B, heads, N|M, d)
        mask = attn.prepare_attention_mask(attention_mask, k.shape[2], x.shape[0], out_dim=4)
        return attn.tokens_out(attn.merge_heads(self.attend(attn, q, k, v, mask)), hidden_states)

    def attend(self, attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        scores = q @ k.transpose(-1, -2) * attn.scale  # (B, heads, N, M)
        if mask is not None:
            scores = scores + mask
        return scores.softmax(dim=-1).to(v.dtype) @ v


class AttnProcessor2_0(AttnProcessor):
    """The same attention through torch's fused `scaled_dot_product_attention` kernel (default)."""

    def attend(self, attn: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


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
        self.residual_connection = True
        self.rescale_output_factor = rescale_output_factor

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **cross_attention_kwargs) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W): self-attention over the H·W positions (the context is ignored)."""
        return self.processor(self, x, None, None, **_call_kwargs(self.processor, cross_attention_kwargs))
