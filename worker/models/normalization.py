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


QK_NORM_KINDS = (None, "rms_norm", "layer_norm")


def qk_rms_norm(dim_head: int, eps: float, enabled: bool | str | None = True) -> nn.Module | None:
    """The q/k norm over each head's channels, or None when disabled.

    `enabled`: True or "rms_norm" (SD3.5, FLUX), "layer_norm" (an affine LayerNorm, which SD3's
    `qk_norm="layer_norm"` config asks for), False or None for none.
    """
    kind = "rms_norm" if enabled is True else enabled or None
    if kind not in QK_NORM_KINDS:
        raise ValueError(f"unsupported qk_norm {kind!r}; supported: {list(QK_NORM_KINDS)}")
    if kind == "layer_norm":
        return nn.LayerNorm(dim_head, eps=eps)
    return nn.RMSNorm(dim_head, eps=eps) if kind else None


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
