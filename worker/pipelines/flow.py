"""Pieces shared by the flow-matching pipelines (FLUX, SD3): latent packing, position ids, the
resolution-dependent shift μ, schedules cut by `strength`, and VAE latent normalisation.

Rectified flow (Esser et al. 2024, "Scaling Rectified Flow Transformers"): x_σ = (1 − σ)·x_0 + σ·ε,
the model predicts v = ε − x_0 and the scheduler integrates it from σ = 1 to 0.
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping, Sequence

import numpy as np
import torch


# ---------------------------------------------------------------------------------- packing
def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """FLUX's 2×2 patches as tokens: (B, C, h, w) -> (B, h/2 · w/2, 4C), channels before (dy, dx)."""
    B, C, h, w = latents.shape
    patches = latents.view(B, C, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)  # (B, h/2, w/2, C, 2, 2)
    return patches.reshape(B, (h // 2) * (w // 2), C * 4)


def unpack_latents(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of `pack_latents`: (B, h/2 · w/2, 4C) -> (B, C, h, w) for latent size (h, w)."""
    B, _, D = tokens.shape
    patches = tokens.view(B, h // 2, w // 2, D // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)  # (B, C, h/2, 2, w/2, 2)
    return patches.reshape(B, D // 4, h, w)


def packed_latent_size(height: int, width: int, vae_scale_factor: int) -> tuple[int, int]:
    """Latent (h, w) for an image of (height, width), floored to even sizes so 2×2 patches tile it."""
    return 2 * (height // (vae_scale_factor * 2)), 2 * (width // (vae_scale_factor * 2))


def latent_image_ids(h: int, w: int, device: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """FLUX RoPE positions of the packed image tokens: (h/2 · w/2, 3) rows of (0, row, column)."""
    rows = torch.arange(h // 2)[:, None].expand(h // 2, w // 2)
    cols = torch.arange(w // 2)[None, :].expand(h // 2, w // 2)
    ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
    return ids.to(device=device, dtype=dtype or torch.float32)


def text_ids(length: int, device: Any = None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """FLUX RoPE positions of the text tokens: all zeros, (L, 3)."""
    return torch.zeros(length, 3, device=device, dtype=dtype or torch.float32)


# ---------------------------------------------------------------------------------- VAE latents
def vae_shift(vae: Any) -> float:
    return vae.config.get("shift_factor") or 0.0


def normalize_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """VAE posterior sample -> model latent space: (z − shift_factor) · scaling_factor."""
    return (latents - vae_shift(vae)) * vae.config.scaling_factor


def denormalize_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Model latents -> what the VAE decodes: z / scaling_factor + shift_factor."""
    return latents / vae.config.scaling_factor + vae_shift(vae)


# ---------------------------------------------------------------------------------- schedule
def dynamic_shift_mu(image_seq_len: int, config: Mapping[str, Any], max_shift_default: float = 1.15) -> float:
    """μ for resolution-dependent shifting: linear in the number of image tokens, from `base_shift` at
    `base_image_seq_len` to `max_shift` at `max_image_seq_len` (FLUX; SD3 eq. 23 in log-SNR form)."""
    base_len, max_len = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    base_shift, max_shift = config.get("base_shift", 0.5), config.get("max_shift", max_shift_default)
    slope = (max_shift - base_shift) / (max_len - base_len)
    return image_seq_len * slope + (base_shift - slope * base_len)


def flux_default_sigmas(num_inference_steps: int) -> list[float]:
    """FLUX's σ grid before shifting: n points from 1 down to 1/n."""
    return np.linspace(1.0, 1 / num_inference_steps, num_inference_steps).tolist()


def new_flow_scheduler(pipe_scheduler: Any, num_inference_steps: int | None, device: Any,
                       sigmas: Sequence[float] | None = None, mu: float | None = None) -> Any:
    """A fresh clone of `pipe_scheduler` with its timesteps set.

    Custom `sigmas` are dropped for schedulers that make their own flow σ (`use_flow_sigmas`); `mu`
    goes only to schedulers that take it and shift dynamically (`use_dynamic_shifting`, kept in the
    config of a scheduler built from a dynamic one, e.g. Heun from FLUX-dev's Euler config) — the
    others shift by their static `shift`, as Diffusers' do when they ignore μ.
    """
    scheduler = pipe_scheduler.clone()
    if scheduler.config.get("use_flow_sigmas"):
        sigmas = None
    accepted = inspect.signature(scheduler.set_timesteps).parameters
    kwargs: dict[str, Any] = {"device": device}
    if mu is not None and "mu" in accepted and scheduler.config.get("use_dynamic_shifting"):
        kwargs["mu"] = mu
    if sigmas is not None:
        if "sigmas" not in accepted:
            raise ValueError(f"{type(scheduler).__name__} does not take custom sigmas")
        scheduler.set_timesteps(sigmas=sigmas, **kwargs)
    else:
        scheduler.set_timesteps(num_inference_steps, **kwargs)
    scheduler.set_begin_index(0)
    return scheduler


def flow_strength_timesteps(scheduler: Any, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The tail of the schedule that `strength` keeps (flow pipelines' rule).

    Skips int(n − min(n·strength, n)) steps (note: the product is not floored first, unlike SD's
    rule), `order` entries each; tells the scheduler where it begins.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")
    skipped = int(max(num_inference_steps - min(num_inference_steps * strength, num_inference_steps), 0))
    start = skipped * scheduler.order
    scheduler.set_begin_index(start)
    timesteps = scheduler.timesteps[start:]
    if num_inference_steps - skipped < 1 or len(timesteps) == 0:
        raise ValueError(
            f"strength {strength} with {num_inference_steps} steps leaves no step to run; "
            "raise strength or num_inference_steps"
        )
    return timesteps


def noise_to(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − σ_t)·x_0 + σ_t·ε through the scheduler (`scale_noise` of flow schedulers, else `add_noise`)."""
    if hasattr(scheduler, "scale_noise"):
        return scheduler.scale_noise(latents, timestep, noise)
    return scheduler.add_noise(latents, noise, timestep)
