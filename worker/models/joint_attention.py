"""Joint attention of MMDiT (Esser et al., 2024, "Scaling Rectified Flow Transformers").

Image tokens x and text tokens (the context) have their own q/k/v projections (`to_*` and
`add_*_proj`), are concatenated into one sequence [context, x], attend jointly with torch's fused
`scaled_dot_product_attention`, and are split again, each with its own output projection
(`to_out.0`, `to_add_out`). Optional per-head RMS norms on q and k (SD3.5, FLUX) and rotary
position embedding over the joint sequence (FLUX). Without a context it is plain self-attention.

Every projection is a plain `nn.Linear` (adapters wrap them); names are Diffusers' own.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from worker.models.normalization import qk_rms_norm
from worker.models.rope import apply_rope

# Order in which each reference family creates the projections: random init consumes the RNG in
# this order, so the same seed gives the same weights as Diffusers.
INIT_ORDERS: dict[str, tuple[str, ...]] = {
    "flux": ("to_q", "to_k", "to_v", "to_out", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"),
    "sd3": ("to_q", "to_k", "to_v", "add_k_proj", "add_v_proj", "add_q_proj", "to_out", "to_add_out"),
}


class JointAttention(nn.Module):
    """Multi-head attention over [context, x] with separate projections per stream.

    Args:
        dim: channels of x (and of both outputs).
        heads, dim_head: number and size of heads.
        context_dim: channels of the context; None builds a self-attention without `add_*` layers.
        qk_norm: normalise q and k (and the context's) per head: True/"rms_norm", "layer_norm", or off.
        out_proj: whether x's output passes `to_out.0` (False for FLUX's single-stream block).
        context_out_proj: whether the context's output passes `to_add_out` (False in SD3's last block).
        init_order: a key of `INIT_ORDERS`: which reference's creation order to follow.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int | None = None,
                 qk_norm: bool | str | None = False,
                 eps: float = 1e-6, out_proj: bool = True, context_out_proj: bool = True, init_order: str = "flux"):
        super().__init__()
        if init_order not in INIT_ORDERS:
            raise ValueError(f"unknown init_order {init_order!r}; known: {sorted(INIT_ORDERS)}")
        inner = heads * dim_head
        self.heads = heads
        self.norm_q, self.norm_k = qk_rms_norm(dim_head, eps, qk_norm), qk_rms_norm(dim_head, eps, qk_norm)
        has_context = context_dim is not None
        factories: dict[str, Callable[[], nn.Module | None]] = {
            "to_q": lambda: nn.Linear(dim, inner), "to_k": lambda: nn.Linear(dim, inner),
            "to_v": lambda: nn.Linear(dim, inner),
            "to_out": lambda: nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)]) if out_proj else None,
            "add_q_proj": lambda: nn.Linear(context_dim, inner) if has_context else None,
            "add_k_proj": lambda: nn.Linear(context_dim, inner) if has_context else None,
            "add_v_proj": lambda: nn.Linear(context_dim, inner) if has_context else None,
            "to_add_out": lambda: nn.Linear(inner, dim) if has_context and context_out_proj else None,
        }
        for name in INIT_ORDERS[init_order]:
            setattr(self, name, factories[name]())
        self.norm_added_q = qk_rms_norm(dim_head, eps, qk_norm if has_context else None)
        self.norm_added_k = qk_rms_norm(dim_head, eps, qk_norm if has_context else None)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, N, dim), context (B, M, context_dim), rope (cos, sin) (M + N, dim_head).

        Returns (x_out (B, N, dim), context_out (B, M, dim) or None).
        """
        q, k, v = self._project(x, self.to_q, self.to_k, self.to_v, self.norm_q, self.norm_k)  # (B, H, N, d)
        if context is not None:
            if self.add_q_proj is None:
                raise ValueError("this attention layer was built without context projections (context_dim=None)")
            cq, ck, cv = self._project(context, self.add_q_proj, self.add_k_proj, self.add_v_proj,
                                       self.norm_added_q, self.norm_added_k)  # (B, H, M, d)
            q, k, v = torch.cat([cq, q], dim=2), torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)  # (B, M + N, H * d)
        split = 0 if context is None else context.shape[1]
        context_out, x_out = out[:, :split], out[:, split:]
        if self.to_out is not None:
            x_out = self.to_out[1](self.to_out[0](x_out))
        if context is None:
            return x_out, None
        return x_out, (self.to_add_out(context_out) if self.to_add_out is not None else context_out)

    def _project(self, tokens: torch.Tensor, to_q: nn.Module, to_k: nn.Module, to_v: nn.Module,
                 norm_q: nn.Module | None, norm_k: nn.Module | None) -> tuple[torch.Tensor, ...]:
        """tokens (B, N, C) -> q, k, v (B, H, N, d), q and k normalised per head when norms are given."""
        q, k, v = (proj(tokens).unflatten(-1, (self.heads, -1)) for proj in (to_q, to_k, to_v))  # (B, N, H, d)
        q = norm_q(q) if norm_q is not None else q
        k = norm_k(k) if norm_k is not None else k
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
