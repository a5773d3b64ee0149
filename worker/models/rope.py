"""Rotary position embedding (RoPE, Su et al., 2021) over several position axes, as in FLUX.

Each token has integer positions on `len(axes_dim)` axes (FLUX: (index, row, column)). Axis i
owns `axes_dim[i]` channels of every head, rotated in pairs (2j, 2j+1) by the angle
pos_i * theta^(-2j / axes_dim[i]). The frequency table is built in float64 (float32 where the
device has no float64) and the rotation runs in float32, as the reference does.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def rope_cos_sin(ids: torch.Tensor, axes_dim: Sequence[int], theta: float = 10000.0) -> tuple[torch.Tensor, ...]:
    """ids (S, n_axes) -> (cos, sin), each (S, sum(axes_dim)) float32, every value repeated per pair."""
    freq_dtype = torch.float32 if ids.device.type == "mps" else torch.float64
    pos = ids.float()
    angles = []
    for axis, dim in enumerate(axes_dim):
        inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=freq_dtype, device=ids.device) / dim)  # (dim/2,)
        angles.append(torch.outer(pos[:, axis], inv_freq))  # (S, dim/2)
    angle = torch.cat(angles, dim=-1).repeat_interleave(2, dim=-1)  # (S, D): pairs share an angle
    return angle.cos().float(), angle.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x (B, H, S, D) by the angles of (cos, sin) (S, D); returns x's dtype.

    (a, b) -> (a cos - b sin, b cos + a sin) for each pair (a, b) = (x[2j], x[2j+1]).
    """
    pairs = x.unflatten(-1, (-1, 2))  # (B, H, S, D/2, 2)
    a, b = pairs.unbind(-1)
    rotated = torch.stack([-b, a], dim=-1).flatten(-2)  # (B, H, S, D)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


class RotaryPosEmbed(nn.Module):
    """Parameter-free module: position ids (S, n_axes) -> (cos, sin) tables for `apply_rope`."""

    def __init__(self, axes_dim: Sequence[int], theta: float = 10000.0):
        super().__init__()
        self.axes_dim = tuple(axes_dim)
        self.theta = theta

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if ids.ndim != 2 or ids.shape[-1] != len(self.axes_dim):
            raise ValueError(f"position ids must have shape (seq, {len(self.axes_dim)}); got {tuple(ids.shape)}")
        return rope_cos_sin(ids, self.axes_dim, self.theta)
