"""The VAE posterior q(z|x) = N(mean, diag(exp(logvar))) (Kingma & Welling, 2014)."""

from __future__ import annotations

from typing import Sequence

import torch


def seeded_randn(shape: Sequence[int], generator: torch.Generator | Sequence[torch.Generator] | None,
                 device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise drawn the way the Diffusers reference draws it, so seeds agree.

    A CPU generator draws on the CPU then moves to `device`; a list of generators draws one
    sample (leading dimension) per generator.
    """
    generators = list(generator) if isinstance(generator, (list, tuple)) else generator
    if isinstance(generators, list) and len(generators) == 1:
        generators = generators[0]
    draw_device = device
    first = generators[0] if isinstance(generators, list) else generators
    if first is not None and first.device.type != device.type:
        if first.device.type != "cpu":
            raise ValueError(f"cannot draw a {device} tensor from a {first.device.type} generator")
        draw_device = torch.device("cpu")
    if isinstance(generators, list):
        if len(generators) != shape[0]:
            raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]}")
        one = (1, *shape[1:])
        noise = torch.cat([torch.randn(one, generator=g, device=draw_device, dtype=dtype) for g in generators])
    else:
        noise = torch.randn(tuple(shape), generator=generators, device=draw_device, dtype=dtype)
    return noise.to(device)


class DiagonalGaussianDistribution:
    """Built from the encoder's moments (B, 2C, h, w): mean and log-variance halves.

    The log-variance is clamped to [-30, 20] so exp() stays finite.
    """

    def __init__(self, parameters: torch.Tensor, deterministic: bool = False):
        self.parameters = parameters
        self.mean, logvar = torch.chunk(parameters, 2, dim=1)  # (B, C, h, w) each
        self.logvar = torch.clamp(logvar, -30.0, 20.0)
        self.deterministic = deterministic
        if deterministic:
            self.std = self.var = torch.zeros_like(self.mean)
        else:
            self.std = torch.exp(0.5 * self.logvar)
            self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """z = mean + std * eps, eps ~ N(0, I) (reparameterisation)."""
        noise = seeded_randn(self.mean.shape, generator, self.parameters.device, self.parameters.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample: 0.5 * sum(mean^2 + var - 1 - logvar)."""
        if self.deterministic:
            return torch.zeros(self.mean.shape[0], device=self.mean.device)
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=[1, 2, 3])
