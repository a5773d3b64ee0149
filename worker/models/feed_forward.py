"""The transformer MLP of DiT/MMDiT blocks: Linear -> GELU (tanh approximation) -> Linear.

State-dict names as Diffusers' `FeedForward(activation_fn="gelu-approximate")`: `net.0.proj`,
`net.2` (`net.1` is dropout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GELUProjection(nn.Module):
    """gelu_tanh(proj(x)): (B, N, dim_in) -> (B, N, dim_out)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class GELUFeedForward(nn.Module):
    """(B, N, dim) -> Linear to mult*dim -> gelu_tanh -> dropout -> Linear -> (B, N, dim_out or dim)."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.ModuleList([GELUProjection(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim_out or dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x
