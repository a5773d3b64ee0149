"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2) over a subsequence of timesteps."""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import torch

from .base import KARRAS_FAMILY, Generator, randn_tensor
from .prediction import denoise_vp, limit_x0
from .schedules import check_num_steps, timestep_grid
from .vp import VPScheduleMixin
from worker.runtime.configuration import register_to_config

logger = logging.getLogger(__name__)


def _fixed_small(var: torch.Tensor, beta: torch.Tensor, predicted: Any) -> torch.Tensor:
    return var.clamp(min=1e-20) ** 0.5


def _fixed_small_log(var: torch.Tensor, beta: torch.Tensor, predicted: Any) -> torch.Tensor:
    return torch.exp(0.5 * torch.log(var.clamp(min=1e-20)))


def _fixed_large(var: torch.Tensor, beta: torch.Tensor, predicted: Any) -> torch.Tensor:
    return beta**0.5


def _learned(var: torch.Tensor, beta: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    return predicted**0.5  # the network predicts the variance itself


def _learned_range(var: torch.Tensor, beta: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    # Nichol & Dhariwal 2021, eq. 15: log Σ = v log β_t + (1 − v) log β̃_t, with v = (out + 1)/2.
    frac = (predicted + 1) / 2
    log_var = frac * torch.log(beta) + (1 - frac) * torch.log(var.clamp(min=1e-20))
    return torch.exp(0.5 * log_var)


# variance_type → standard deviation of the noise added at a step, from β̃_t (posterior), β_t.
VARIANCE_TYPES = {
    "fixed_small": _fixed_small,
    "fixed_small_log": _fixed_small_log,
    "fixed_large": _fixed_large,
    "fixed_large_log": _fixed_large,
    "learned": _learned,
    "learned_range": _learned_range,
}
LEARNED_VARIANCE = ("learned", "learned_range")

# What Diffusers' `_get_variance` returns per variance_type (its public contract, mixed units:
# a variance, a standard deviation or a log-variance), from β̃ (clamped), β and the model's value.
VARIANCE_REPORTS = {
    "fixed_small": lambda var, beta, predicted: var,
    "fixed_small_log": lambda var, beta, predicted: torch.exp(0.5 * torch.log(var)),
    "fixed_large": lambda var, beta, predicted: beta,
    "fixed_large_log": lambda var, beta, predicted: torch.log(beta),
    "learned": lambda var, beta, predicted: predicted,
    "learned_range": lambda var, beta, predicted: (predicted + 1) / 2 * torch.log(beta)
    + (1 - (predicted + 1) / 2) * torch.log(var),
}


class DDPMScheduler(VPScheduleMixin):
    """Ancestral DDPM: x_{t'} ~ q(x_{t'} | x_t, x̂_0) for each consecutive pair t > t'."""

    _compatibles = KARRAS_FAMILY

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        variance_type: str = "fixed_small",
        clip_sample: bool = True,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        if variance_type not in VARIANCE_TYPES:  # Diffusers accepts any name and samples as fixed_small
            logger.warning("variance_type %r is not one of %s; sampling as 'fixed_small'", variance_type,
                           ", ".join(VARIANCE_TYPES))
        self._build_tables()
        self.num_inference_steps: int | None = None
        self.custom_timesteps = False
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._reset()

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        timesteps: Sequence[int] | None = None,
        sigmas: Any = None,
    ) -> None:
        """Choose the descending integer timesteps to sample at (or take custom `timesteps`)."""
        if sigmas is not None:
            raise ValueError("DDPMScheduler takes timesteps, not sigmas")
        self._check_timestep_args(num_inference_steps, timesteps)
        T = self.config.num_train_timesteps
        if timesteps is not None:
            grid = np.array(list(timesteps), dtype=np.int64)
            if np.any(grid[1:] >= grid[:-1]) or grid[0] >= T:
                raise ValueError(f"custom timesteps must be strictly descending and below {T}")
            self.custom_timesteps, self.num_inference_steps = True, len(grid)
        else:
            n = check_num_steps(num_inference_steps, T)
            c = self.config
            grid = timestep_grid(c.timestep_spacing, T, n, c.steps_offset).astype(np.int64)
            self.custom_timesteps, self.num_inference_steps = False, n
        self.timesteps = torch.from_numpy(grid).to(device)
        self._reset()

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The next timestep of the schedule after `timestep` (a tensor), or −1 after the last one;
        `timestep` − 1 before `set_timesteps`."""
        if self.num_inference_steps is None:
            return timestep - 1
        index = self.index_for_timestep(timestep)
        return torch.tensor(-1) if index == len(self.timesteps) - 1 else self.timesteps[index + 1]

    def _alpha_bars(self, t: int, prev_t: int) -> tuple[torch.Tensor, torch.Tensor]:
        prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        return self.alphas_cumprod[t], prev

    def _get_variance(
        self, t: int, predicted_variance: torch.Tensor | None = None, variance_type: str | None = None
    ) -> torch.Tensor:
        """The step's variance as Diffusers reports it for `variance_type` (default: the config's)."""
        ab_t, ab_prev = self._alpha_bars(int(t), int(self.previous_timestep(t)))
        beta = 1 - ab_t / ab_prev
        var = ((1 - ab_prev) / (1 - ab_t) * beta).clamp(min=1e-20)  # β̃, DDPM eq. 7
        kind = variance_type or self.config.variance_type
        return VARIANCE_REPORTS.get(kind, VARIANCE_REPORTS["fixed_small"])(var, beta, predicted_variance)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> Any:
        """One ancestral step: posterior mean (DDPM eq. 7) plus σ-scaled fresh noise (t > 0)."""
        t = int(timestep)
        prev_t = int(self.previous_timestep(t))
        predicted_var = None
        if model_output.shape[1] == 2 * sample.shape[1] and self.config.variance_type in LEARNED_VARIANCE:
            model_output, predicted_var = torch.split(model_output, sample.shape[1], dim=1)
        ab_t, ab_prev = self._alpha_bars(t, prev_t)
        beta = 1 - ab_t / ab_prev  # effective β between t and prev_t
        x0 = denoise_vp(self.config.prediction_type, model_output, sample, ab_t**0.5, (1 - ab_t) ** 0.5).x0
        x0 = limit_x0(x0, self._option)
        # μ̃ = √ᾱ_{t'} β / (1−ᾱ_t) · x̂_0 + √(1−β) (1−ᾱ_{t'}) / (1−ᾱ_t) · x_t
        prev = (ab_prev**0.5 * beta / (1 - ab_t)) * x0 + ((1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab_t)) * sample
        if t > 0:
            noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            posterior_var = (1 - ab_prev) / (1 - ab_t) * beta  # β̃ (DDPM eq. 7)
            std_of = VARIANCE_TYPES.get(self.config.variance_type, _fixed_small)
            prev = prev + std_of(posterior_var, beta, predicted_var) * noise
        return self._output(return_dict, prev, x0)
