"""Adaptive layer norms of diffusion transformers (adaLN, Peebles & Xie, 2023, "DiT").

A conditioning vector `emb` (B, C) -> SiLU -> Linear gives per-sample modulation vectors; the
token stream x (B, N, D) is LayerNorm-ed (no affine) and modulated as
`norm(x) * (1 + scale) + shift`. The "zero" variants also hand back gates for the residual
branches (initialised to zero in training, hence the name). Diffusers' class and key names
(`linear`, `norm`) so checkpoints load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, N, D) * (1 + scale (B, D)) + shift (B, D), per sample."""
    return torch.addcmul(shift[:, None], x, 1 + scale[:, None])


def qk_rms_norm(dim_head: int, eps: float, enabled: bool = True) -> nn.Module | None:
    """RMS norm over each head's channels (q/k norm of SD3.5 and FLUX), or None when disabled."""
    return nn.RMSNorm(dim_head, eps=eps) if enabled else None


class AdaLayerNormZero(nn.Module):
    """emb -> `num_params` vectors of size D; returns (modulate(norm(x), p0, p1), p2, ..., p_{n-1}).

    `num_params` is 6 for a double-stream block (shift/scale/gate of attention, shift/scale/gate
    of the MLP) and 3 for FLUX's single-stream block (shift, scale, gate).
    """

    def __init__(self, dim: int, num_params: int = 6, eps: float = 1e-6):
        super().__init__()
        self.num_params = num_params
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, num_params * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)

    def parameters_for(self, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """emb (B, D) -> `num_params` tensors (B, D)."""
        return self.linear(self.silu(emb)).chunk(self.num_params, dim=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shift, scale, *rest = self.parameters_for(emb)
        return (modulate(self.norm(x), shift, scale), *rest)


class AdaLayerNormZeroX(AdaLayerNormZero):
    """SD3.5's MMDiT-X norm: 9 vectors, the last three (shift, scale, gate) feed a second attention.

    Returns (x_attn, gate_msa, shift_mlp, scale_mlp, gate_mlp, x_attn2, gate_msa2).
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, num_params=9, eps=eps)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shift, scale, gate, shift_mlp, scale_mlp, gate_mlp, shift2, scale2, gate2 = self.parameters_for(emb)
        normed = self.norm(x)
        return (modulate(normed, shift, scale), gate, shift_mlp, scale_mlp, gate_mlp,
                modulate(normed, shift2, scale2), gate2)


class AdaLayerNormContinuous(nn.Module):
    """Final norm: modulate(norm(x), shift, scale) with (scale, shift) = Linear(SiLU(cond)) — scale first."""

    def __init__(self, dim: int, conditioning_dim: int, eps: float = 1e-6):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(conditioning_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=eps)

    def forward(self, x: torch.Tensor, conditioning: torch.Tensor) -> torch.Tensor:
        """x (B, N, D), conditioning (B, C) -> (B, N, D)."""
        scale, shift = self.linear(self.silu(conditioning).to(x.dtype)).chunk(2, dim=1)
        return modulate(self.norm(x), shift, scale)
