"""Timestep embeddings: sinusoidal and Gaussian Fourier features, then an MLP.

Sinusoidal features follow "Attention Is All You Need" (Vaswani et al., 2017) as used by DDPM
(Ho et al., 2020); Fourier features follow Tancik et al. (2020) as used by score SDEs
(Song et al., 2021).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from worker.models.activations import get_activation


def sinusoidal_embedding(
    timesteps: torch.Tensor,
    dim: int,
    flip_sin_to_cos: bool = False,
    freq_shift: float = 1.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """(N,) timesteps -> (N, dim) float32 features.

    freq_i = exp(-ln(max_period) * i / (half - freq_shift)), i < half = dim // 2;
    features = [sin(t * freq), cos(t * freq)] (or [cos, sin] with `flip_sin_to_cos`),
    zero-padded by one column when `dim` is odd.
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    angles = timesteps[:, None].float() * freqs[None, :]  # (N, half)
    sin, cos = torch.sin(angles), torch.cos(angles)
    emb = torch.cat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    if dim % 2 == 1:
        emb = nn.functional.pad(emb, (0, 1))
    return emb


class Timesteps(nn.Module):
    """Parameter-free sinusoidal features of timesteps (N,) -> (N, num_channels)."""

    def __init__(self, num_channels: int, flip_sin_to_cos: bool, freq_shift: float):
        super().__init__()
        self.num_channels = num_channels
        self.flip_sin_to_cos = flip_sin_to_cos
        self.freq_shift = freq_shift

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return sinusoidal_embedding(timesteps, self.num_channels, self.flip_sin_to_cos, self.freq_shift)


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of noise levels: [sin(2πσ'w), cos(2πσ'w)], σ' = log σ if `log`.

    `weight` (embedding_size,) is a fixed (non-trained) Gaussian draw stored in the checkpoint.
    """

    def __init__(self, embedding_size: int = 256, scale: float = 1.0, log: bool = True,
                 flip_sin_to_cos: bool = False, second_draw: bool = True):
        super().__init__()
        if second_draw:  # the reference draws twice and keeps the second (UNet2DModel), once in UNet2DCondition
            torch.randn(embedding_size)
        self.weight = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)
        self.log = log
        self.flip_sin_to_cos = flip_sin_to_cos

    def forward(self, sigmas: torch.Tensor) -> torch.Tensor:
        x = torch.log(sigmas) if self.log else sigmas
        angles = x[:, None] * self.weight[None, :] * 2 * math.pi  # (N, embedding_size)
        sin, cos = torch.sin(angles), torch.cos(angles)
        return torch.cat([cos, sin] if self.flip_sin_to_cos else [sin, cos], dim=-1)


class TimestepEmbedding(nn.Module):
    """MLP on timestep features: linear_1 -> act -> linear_2 (-> post act).

    With `cond_proj_dim` (LCM guidance embedding), `cond_proj(condition)` (no bias) is added to
    the features before the MLP.
    """

    def __init__(self, in_channels: int, time_embed_dim: int, act_fn: str = "silu",
                 out_dim: int | None = None, post_act_fn: str | None = None,
                 cond_proj_dim: int | None = None):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, time_embed_dim)
        self.cond_proj = nn.Linear(cond_proj_dim, in_channels, bias=False) if cond_proj_dim else None
        self.act = get_activation(act_fn)
        self.linear_2 = nn.Linear(time_embed_dim, out_dim or time_embed_dim)
        self.post_act = get_activation(post_act_fn) if post_act_fn else None

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            if self.cond_proj is None:
                raise ValueError("a timestep condition was given but the model has no time_cond_proj_dim")
            sample = sample + self.cond_proj(condition)
        sample = self.linear_2(self.act(self.linear_1(sample)))
        return self.post_act(sample) if self.post_act is not None else sample


def timesteps_for_batch(timestep: torch.Tensor | float | int, batch: int, device: torch.device) -> torch.Tensor:
    """Scalar, 0-d or (B,) timesteps -> (B,) tensor on `device` (one value per sample).

    Python floats become float64 and ints int64, as the reference does, so features match.
    """
    if not torch.is_tensor(timestep):
        dtype = torch.float64 if isinstance(timestep, float) else torch.int64
        if device.type == "mps" and dtype == torch.float64:
            dtype = torch.float32
        timestep = torch.tensor([timestep], dtype=dtype, device=device)
    elif timestep.ndim == 0:
        timestep = timestep[None].to(device)
    else:
        timestep = timestep.to(device)
    if timestep.ndim != 1 or timestep.shape[0] not in (1, batch):
        raise ValueError(
            f"timestep must be a scalar or hold one value per sample ({batch}); got shape {tuple(timestep.shape)}"
        )
    return timestep.expand(batch)
