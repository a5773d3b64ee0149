"""Discrete-time, variance-preserving schedules: tables of β_t and ᾱ_t indexed by integer t."""

from __future__ import annotations

import numpy as np
import torch

from .base import SchedulerMixin, broadcast_to
from .prediction import DIFFUSION_PREDICTION_TYPES, check_prediction_type
from .schedules import alphas_cumprod, check_choice, make_betas, train_sigmas, TIMESTEP_SPACINGS


class VPScheduleMixin(SchedulerMixin):
    """Builds β, α, ᾱ from the config and adds noise as x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε."""

    betas: torch.Tensor  # (T,)
    alphas: torch.Tensor  # (T,)
    alphas_cumprod: torch.Tensor  # (T,)

    _prediction_types: tuple[str, ...] = DIFFUSION_PREDICTION_TYPES

    def _build_tables(self) -> None:
        c = self.config
        check_prediction_type(c.prediction_type, self._prediction_types)
        check_choice("timestep_spacing", self._option("timestep_spacing", "linspace"), TIMESTEP_SPACINGS)
        self.betas = make_betas(
            c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule,
            c.trained_betas, self._option("rescale_betas_zero_snr", False),
        )
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = alphas_cumprod(self.betas)

    def _build_train_sigmas(self) -> torch.Tensor:
        """Set the training σ tables `_train_sigmas` (T,), ascending in t, and `_log_sigmas`; return their ᾱ.

        Under zero-terminal-SNR rescaling ᾱ_{T−1} = 0 would make σ_{T−1} infinite; it is raised to 2^−24.
        """
        alpha_bar = self.alphas_cumprod
        if self._option("rescale_betas_zero_snr"):
            alpha_bar = torch.cat([alpha_bar[:-1], torch.tensor([2.0**-24])])
        self._train_sigmas = train_sigmas(alpha_bar)
        self._log_sigmas = np.log(self._train_sigmas)
        return alpha_bar

    def _alpha_bar(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        table = self.alphas_cumprod.to(device=like.device, dtype=like.dtype)
        return broadcast_to(table[timesteps.to(like.device)], like)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0) at integer `timesteps` (one per batch row, or one)."""
        alpha_bar = self._alpha_bar(timesteps, original)
        return alpha_bar**0.5 * original + (1 - alpha_bar) ** 0.5 * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (the v-prediction training target)."""
        alpha_bar = self._alpha_bar(timesteps, sample)
        return alpha_bar**0.5 * noise - (1 - alpha_bar) ** 0.5 * sample

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """VP schedulers feed x_t to the model unscaled."""
        return sample

    @property
    def init_noise_sigma(self) -> float:
        return 1.0
