"""What the models return when `return_dict=True` (attribute access like Diffusers' outputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from worker.models.distributions import DiagonalGaussianDistribution


@dataclass
class UNetOutput:
    """Model prediction, (B, C, H, W)."""

    sample: torch.Tensor


@dataclass
class DecoderOutput:
    """Decoded images, (B, 3, H, W) in [-1, 1] (roughly)."""

    sample: torch.Tensor


@dataclass
class AutoencoderKLOutput:
    """Posterior over latents for each encoded image."""

    latent_dist: "DiagonalGaussianDistribution"
