"""Sampler updates as small pure functions over σ (in the spirit of k-diffusion's sampling.py).

x is the VE sample (x = x_0 + σ ε); `d = (x − x̂_0)/σ` is the probability-flow ODE derivative
dx/dσ (Karras et al. 2022, eq. 3 with σ(t) = t). The scheduler classes are stateful shells that
pick σ's from their grid and call these.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .base import Generator, randn_tensor


def to_d(x: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """dx/dσ of the probability-flow ODE at (x, σ)."""
    return (x - x0) / sigma


def euler_update(x: torch.Tensor, d: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """x(σ_next) ≈ x + (σ_next − σ) d."""
    return x + d * (sigma_next - sigma)


def ancestral_sigmas(
    sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a step σ_from → σ_to into a deterministic part to σ_down plus fresh noise of std σ_up.

    σ_up = η √(σ_to² (σ_from² − σ_to²) / σ_from²), σ_down = √(σ_to² − σ_up²) (k-diffusion).
    """
    sigma_up = eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    sigma_up = torch.minimum(torch.as_tensor(sigma_to), torch.as_tensor(sigma_up))
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def churn_gamma(s_churn: float, num_sigmas: int, sigma: torch.Tensor, s_tmin: float, s_tmax: float) -> float:
    """Karras et al. 2022, Algorithm 2: γ = min(S_churn / N, √2 − 1) inside [S_tmin, S_tmax]."""
    if not (s_tmin <= float(sigma) <= s_tmax):
        return 0.0
    return min(s_churn / num_sigmas, 2**0.5 - 1)


def churn(x: torch.Tensor, sigma: torch.Tensor, gamma: float, s_noise: float, generator: Generator,
          like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x at σ̂, σ̂) with σ̂ = σ (1 + γ): fresh noise of std s_noise √(σ̂² − σ²) when γ > 0 (Karras
    et al. 2022, Algorithm 2). The noise is drawn with `like`'s shape, device and dtype."""
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        noise = randn_tensor(like.shape, generator, like.device, like.dtype)
        x = x + noise * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
    return x, sigma_hat


# Gauss–Legendre nodes/weights on [−1, 1]; 4 points integrate polynomials of degree ≤ 7 exactly,
# more than LMS (degree ≤ 3) needs.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(4)


def integrate_polynomial(f, a: float, b: float) -> float:
    """∫_a^b f(τ) dτ by 4-point Gauss–Legendre (exact for polynomials up to degree 7)."""
    half, mid = (b - a) / 2, (a + b) / 2
    return float(half * sum(w * f(mid + half * x) for x, w in zip(_GL_NODES, _GL_WEIGHTS)))


def lms_coefficients(sigmas: Sequence[float], i: int, order: int) -> list[float]:
    """Linear multistep weights for d_i, d_{i−1}, …: ∫_{σ_i}^{σ_{i+1}} ℓ_j(τ) dτ.

    ℓ_j is the Lagrange basis polynomial through σ_i, σ_{i−1}, …, σ_{i−order+1} that is 1 at
    σ_{i−j} (k-diffusion's `linear_multistep_coeff`).
    """
    nodes = [float(sigmas[i - k]) for k in range(order)]

    def basis(j: int):
        def ell(tau: float) -> float:
            return math.prod((tau - nodes[k]) / (nodes[j] - nodes[k]) for k in range(order) if k != j)
        return ell

    return [integrate_polynomial(basis(j), float(sigmas[i]), float(sigmas[i + 1])) for j in range(order)]
