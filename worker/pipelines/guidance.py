"""Classifier-free guidance, per sample, so one batch can mix jobs with different scales."""

from __future__ import annotations

import math
from typing import Sequence

import torch

GuidanceValue = float | Sequence[float] | torch.Tensor


def per_sample(values: GuidanceValue, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or per-sample values (B,) to (B, 1, 1, ...) in `like`'s dtype and device."""
    batch = like.shape[0]
    tensor = torch.as_tensor(values, dtype=like.dtype, device=like.device).flatten()
    if tensor.numel() == 1:
        tensor = tensor.expand(batch)
    if tensor.numel() != batch:
        raise ValueError(f"got {tensor.numel()} guidance values for a batch of {batch}; give 1 or {batch}")
    return tensor.reshape(batch, *([1] * (like.ndim - 1)))


def any_positive(values: GuidanceValue) -> bool:
    """True when at least one value is > 0 (cheap check before optional work)."""
    return bool((torch.as_tensor(values) > 0).any())


def classifier_free_guidance(
    uncond: torch.Tensor, cond: torch.Tensor, scale: GuidanceValue
) -> torch.Tensor:
    """ε̂ = ε(x, ∅) + w·(ε(x, c) − ε(x, ∅)) (Ho & Salimans 2022, eq. 6); w per sample."""
    return uncond + per_sample(scale, cond) * (cond - uncond)


def rescale_guidance(guided: torch.Tensor, cond: torch.Tensor, rescale: GuidanceValue) -> torch.Tensor:
    """Pull the guided prediction's std back towards the conditional one's.

    Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps Are Flawed", eq. 15-16:
    x_rescaled = x_cfg · σ(x_pos) / σ(x_cfg); result = φ·x_rescaled + (1 − φ)·x_cfg, with the
    std taken per sample over all non-batch dimensions and φ per sample.
    """
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    phi = per_sample(rescale, guided)
    return phi * rescaled + (1 - phi) * guided


def guidance_scale_embedding(scale: torch.Tensor, dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding of the guidance scale for guidance-distilled UNets (LCM).

    Args:
        scale: (B,) the value w that the UNet was distilled with (callers pass guidance − 1).
        dim: `unet.config.time_cond_proj_dim`.

    Returns:
        (B, dim): [sin(1000·w·f_k), cos(1000·w·f_k)] with f_k = 10000^(−k/(dim/2 − 1)), zero-padded
        when dim is odd.
    """
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype) * -(math.log(10000.0) / (half - 1)))
    angles = (scale.to(dtype) * 1000.0)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return torch.nn.functional.pad(emb, (0, dim % 2))
