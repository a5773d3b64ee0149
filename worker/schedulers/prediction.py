"""One adapter from a network's output to (x̂_0, ε̂), whatever it was trained to predict.

With x_t = α_t x_0 + σ_t ε (VP form, α_t² + σ_t² = 1 for discrete DDPM schedules):
    epsilon       the net predicts ε:        x̂_0 = (x_t − σ_t ε̂) / α_t
    sample        the net predicts x_0:      ε̂   = (x_t − α_t x̂_0) / σ_t
    v_prediction  v = α_t ε − σ_t x_0 (Salimans & Ho 2022, §4):
                  x̂_0 = α_t x_t − σ_t v,  ε̂ = α_t v + σ_t x_t
    flow_prediction  on a flow grid (α_t = 1 − σ_t) the net predicts v = ε − x_0: x̂_0 = x_t − σ_t v

Samplers ask this module for x̂_0 or ε̂ and never branch on the prediction type themselves.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from .schedules import check_choice, vp_alpha_sigma

Scalar = torch.Tensor | float


class Denoised(NamedTuple):
    """The model's estimate of the clean sample and of the noise, both shaped like x_t."""

    x0: torch.Tensor
    eps: torch.Tensor


def _from_epsilon(out: torch.Tensor, x: torch.Tensor, alpha: Scalar, sigma: Scalar) -> Denoised:
    return Denoised((x - sigma * out) / alpha, out)


def _from_sample(out: torch.Tensor, x: torch.Tensor, alpha: Scalar, sigma: Scalar) -> Denoised:
    return Denoised(out, (x - alpha * out) / sigma)


def _from_v(out: torch.Tensor, x: torch.Tensor, alpha: Scalar, sigma: Scalar) -> Denoised:
    return Denoised(alpha * x - sigma * out, alpha * out + sigma * x)


def _from_flow(out: torch.Tensor, x: torch.Tensor, alpha: Scalar, sigma: Scalar) -> Denoised:
    # Flow matching: x_σ = (1 − σ) x_0 + σ ε and the net predicts v = ε − x_0, so x̂_0 = x − σ v.
    x0 = x - sigma * out
    return Denoised(x0, (x - alpha * x0) / sigma)


PREDICTION_TYPES: dict[str, Callable[..., Denoised]] = {
    "epsilon": _from_epsilon,
    "sample": _from_sample,
    "v_prediction": _from_v,
    "flow_prediction": _from_flow,
}
# What discrete-time (ᾱ-table) models predict; flow_prediction needs a flow σ grid.
DIFFUSION_PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def check_prediction_type(prediction_type: str, allowed: tuple[str, ...] = DIFFUSION_PREDICTION_TYPES) -> None:
    check_choice("prediction_type", prediction_type, list(allowed))


def denoise_vp(
    prediction_type: str, model_output: torch.Tensor, x_t: torch.Tensor, alpha_t: Scalar, sigma_t: Scalar
) -> Denoised:
    """(x̂_0, ε̂) from a model output at x_t = α_t x_0 + σ_t ε."""
    return PREDICTION_TYPES[prediction_type](model_output, x_t, alpha_t, sigma_t)


def denoise_ve(prediction_type: str, model_output: torch.Tensor, x: torch.Tensor, sigma: Scalar) -> torch.Tensor:
    """x̂_0 from a model output at the VE sample x = x_0 + σ ε (k-diffusion's denoiser).

    The network saw x / √(σ²+1), the VP sample with α = 1/√(σ²+1); for ε-prediction this
    reduces to x̂_0 = x − σ ε̂, for v-prediction to x̂_0 = x/(σ²+1) − σ v/√(σ²+1).
    """
    if prediction_type == "epsilon":  # exact VE shortcut, avoids a divide-multiply by α
        return x - sigma * model_output
    if prediction_type == "v_prediction":
        return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
    alpha_t, sigma_t = vp_alpha_sigma(torch.as_tensor(sigma))
    return denoise_vp(prediction_type, model_output, x * alpha_t, alpha_t, sigma_t).x0


def dynamic_threshold(x0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, §2.3).

    Per sample, s = the `ratio` quantile of |x̂_0|, clamped to [1, max_value]; x̂_0 is clipped
    to [−s, s] and divided by s. Computed in float32 or float64 (quantile needs it).
    """
    dtype = x0.dtype
    B = x0.shape[0]
    flat = x0.reshape(B, -1)
    flat = flat if dtype in (torch.float32, torch.float64) else flat.float()
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)  # (B, 1)
    return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(dtype)


def limit_x0(x0: torch.Tensor, option: Callable[[str, Any], Any]) -> torch.Tensor:
    """Apply the scheduler's `thresholding` (preferred) or `clip_sample` to x̂_0.

    `option(key, default)` reads the scheduler's own config (see `SchedulerMixin._option`).
    """
    if option("thresholding", False):
        return dynamic_threshold(x0, option("dynamic_thresholding_ratio", 0.995), option("sample_max_value", 1.0))
    if option("clip_sample", False):
        r = option("clip_sample_range", 1.0)
        return x0.clamp(-r, r)
    return x0
