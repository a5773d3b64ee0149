"""DDIM (Song et al. 2021): x_{t'} = √ᾱ_{t'} x̂_0 + √(1 − ᾱ_{t'} − σ²) ε̂ + σ z, eq. 12."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .base import KARRAS_FAMILY, Generator, randn_tensor
from .prediction import denoise_vp, limit_x0
from .schedules import check_num_steps, timestep_grid
from .vp import VPScheduleMixin
from worker.runtime.configuration import register_to_config


class DDIMScheduler(VPScheduleMixin):
    """Deterministic (eta = 0) to fully ancestral (eta = 1) implicit sampling."""

    _compatibles = KARRAS_FAMILY

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        clip_sample: bool = True,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        clip_sample_range: float = 1.0,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._build_tables()
        # ᾱ used after the last step: exactly 1 (fully denoised) or ᾱ_0.
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._reset()

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        timesteps: Any = None,
        sigmas: Any = None,
    ) -> None:
        """Choose `num_inference_steps` descending integer timesteps by `timestep_spacing`."""
        self._check_steps_only(timesteps, sigmas)
        c = self.config
        n = check_num_steps(num_inference_steps, c.num_train_timesteps)
        grid = timestep_grid(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset).astype(np.int64)
        self.num_inference_steps = n
        self.timesteps = torch.from_numpy(grid).to(device)
        self._reset()

    def _alpha_bars(self, t: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        # Diffusers' rule: the previous timestep is t − T // n whatever the spacing.
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        return self.alphas_cumprod[t], self._alpha_bar_at(prev_t), prev_t

    def _alpha_bar_at(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def _get_variance(self, timestep: int, prev_timestep: int) -> torch.Tensor:
        """σ_t(1)² of DDIM eq. 16 between `timestep` and `prev_timestep`: (1−ᾱ')/(1−ᾱ) (1 − ᾱ/ᾱ')."""
        ab_t, ab_prev = self.alphas_cumprod[timestep], self._alpha_bar_at(prev_timestep)
        return (1 - ab_prev) / (1 - ab_t) * (1 - ab_t / ab_prev)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        eta: float = 0.0,
        use_clipped_model_output: bool = False,
        generator: Generator = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Any:
        """One DDIM step; `eta` scales the added noise σ_t(η) of eq. 16."""
        self._require_timesteps()
        ab_t, ab_prev, prev_t = self._alpha_bars(int(timestep))
        x0, eps = denoise_vp(self.config.prediction_type, model_output, sample, ab_t**0.5, (1 - ab_t) ** 0.5)
        x0 = limit_x0(x0, self._option)
        if use_clipped_model_output:  # ε consistent with the clipped x̂_0
            eps = (sample - ab_t**0.5 * x0) / (1 - ab_t) ** 0.5
        std = eta * self._get_variance(int(timestep), prev_t) ** 0.5  # σ_t(η)
        prev = ab_prev**0.5 * x0 + (1 - ab_prev - std**2) ** 0.5 * eps
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("pass either generator or variance_noise, not both")
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
            prev = prev + std * variance_noise
        return self._output(return_dict, prev, x0)
