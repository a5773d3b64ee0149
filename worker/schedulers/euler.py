"""Euler and Euler-ancestral samplers (Karras et al. 2022, Algorithm 2; k-diffusion)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from worker.runtime.configuration import register_to_config

from .base import KARRAS_FAMILY, Generator, randn_tensor
from .prediction import denoise_ve
from .sampling import ancestral_sigmas, churn, churn_gamma, euler_update, to_d
from .schedules import check_choice
from .ve import VEScheduleMixin

INTERPOLATION_TYPES = ("linear", "log_linear")
TIMESTEP_TYPES = ("discrete", "continuous")


class EulerDiscreteScheduler(VEScheduleMixin):
    """First-order ODE steps along σ, with optional churn (S_churn) noise injection."""

    _compatibles = KARRAS_FAMILY

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        interpolation_type: str = "linear",
        use_karras_sigmas: bool | None = False,
        use_exponential_sigmas: bool | None = False,
        use_beta_sigmas: bool | None = False,
        sigma_min: float | None = None,
        sigma_max: float | None = None,
        timestep_spacing: str = "linspace",
        timestep_type: str = "discrete",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        final_sigmas_type: str = "zero",
    ) -> None:
        check_choice("interpolation_type", interpolation_type, INTERPOLATION_TYPES)
        check_choice("timestep_type", timestep_type, TIMESTEP_TYPES)
        self._build_sigma_tables()

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        """Build the σ grid (and its fractional timesteps) for this job."""
        ts_t, sig_t = self._grid_tensors(num_inference_steps, timesteps, sigmas)
        if self.config.timestep_type == "continuous" and self.config.prediction_type == "v_prediction":
            ts_t = 0.25 * sig_t[:-1].log()  # EDM's c_noise = ¼ log σ
        self._finish_set_timesteps(ts_t, sig_t, device)

    def _sigmas_for(self, ts: np.ndarray) -> np.ndarray:
        """`log_linear`: σ evenly spaced in log σ over the whole training range, n + 1 points.

        Diffusers keeps these n + 1 points (then the final σ) for the spacing's timesteps and for custom
        ones alike; a Karras/exponential/β respacing then reads only their ends (σ_max, σ_min).
        """
        if self.config.interpolation_type != "log_linear":
            return super()._sigmas_for(ts)
        log_range = torch.linspace(np.log(self._train_sigmas[-1]), np.log(self._train_sigmas[0]), len(ts) + 1)
        return log_range.exp().numpy()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> Any:
        """x ← x + (σ_next − σ̂) d, after raising σ to σ̂ = σ (1 + γ) with fresh noise when γ > 0."""
        self._init_step_index(timestep)
        x = sample.to(torch.float32)
        sigma, sigma_next = self.sigmas[self._step_index], self.sigmas[self._step_index + 1]
        gamma = churn_gamma(s_churn, len(self.sigmas) - 1, sigma, s_tmin, s_tmax)
        x, sigma_hat = churn(x, sigma, gamma, s_noise, generator, model_output)
        x0 = denoise_ve(self.config.prediction_type, model_output, x, sigma_hat)
        prev = euler_update(x, to_d(x, x0, sigma_hat), sigma_hat, sigma_next)
        self._step_index += 1
        return self._output(return_dict, prev.to(model_output.dtype), x0)


class EulerAncestralDiscreteScheduler(VEScheduleMixin):
    """Euler steps to σ_down plus fresh noise of std σ_up (k-diffusion `sample_euler_ancestral`)."""

    _compatibles = KARRAS_FAMILY

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._build_sigma_tables()

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> Any:
        self._init_step_index(timestep)
        x = sample.to(torch.float32)
        sigma, sigma_next = self.sigmas[self._step_index], self.sigmas[self._step_index + 1]
        x0 = denoise_ve(self.config.prediction_type, model_output, x, sigma)
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next)
        prev = euler_update(x, to_d(x, x0, sigma), sigma, sigma_down)
        noise = randn_tensor(model_output.shape, generator, model_output.device, model_output.dtype)
        prev = prev + noise * sigma_up
        self._step_index += 1
        return self._output(return_dict, prev.to(model_output.dtype), x0)
