"""Euler sampling of rectified-flow / flow-matching models (Lipman et al. 2023; Esser et al. 2024).

x_σ = (1 − σ) x_0 + σ ε with σ ∈ [0, 1]; the network predicts the velocity v = ε − x_0, so the
ODE step is x ← x + (σ_next − σ) v. Timesteps are σ · T. Resolution-dependent shifting
(SD3 eq. 23) moves σ toward noise: σ' = s σ / (1 + (s − 1) σ).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

from worker.configuration import register_to_config

from .base import Generator, SchedulerMixin, broadcast_to, randn_tensor
from .schedules import check_choice, respace_sigmas, sigma_schedule_name


def _shift_exponential(mu: float, t: np.ndarray) -> np.ndarray:
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def _shift_linear(mu: float, t: np.ndarray) -> np.ndarray:
    return mu / (mu + (1 / t - 1))


TIME_SHIFTS: dict[str, Callable[[float, np.ndarray], np.ndarray]] = {
    "exponential": _shift_exponential,
    "linear": _shift_linear,
}


def shift_sigmas(sigmas: np.ndarray | torch.Tensor, shift: float) -> np.ndarray | torch.Tensor:
    """SD3's timestep shift σ' = s σ / (1 + (s − 1) σ)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


class FlowMatchEulerDiscreteScheduler(SchedulerMixin):
    """Euler ODE (or stochastic re-noising) steps over shifted σ ∈ (0, 1]."""

    _compatibles: tuple[str, ...] = ()

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float | None = 0.5,
        max_shift: float | None = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: str = "exponential",
        stochastic_sampling: bool = False,
    ) -> None:
        check_choice("time_shift_type", time_shift_type, list(TIME_SHIFTS))
        self._respacing = sigma_schedule_name(use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas)
        train = np.linspace(1, num_train_timesteps, num_train_timesteps, dtype=np.float32)[::-1].copy()
        train = torch.from_numpy(train)
        sigmas = train / num_train_timesteps
        sigmas = sigmas if use_dynamic_shifting else shift_sigmas(sigmas, shift)
        self.timesteps = sigmas * num_train_timesteps
        self.sigmas = sigmas
        self.sigma_min, self.sigma_max = float(sigmas[-1]), float(sigmas[0])
        self.num_inference_steps: int | None = None
        self._reset()

    @property
    def shift(self) -> float:
        return self.config.shift

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        return sample

    def _shifted(self, sigmas: np.ndarray, mu: float | None) -> np.ndarray:
        c = self.config
        if c.use_dynamic_shifting:
            if mu is None:
                raise ValueError("use_dynamic_shifting needs set_timesteps(..., mu=...)")
            sigmas = TIME_SHIFTS[c.time_shift_type](mu, sigmas)
        else:
            sigmas = shift_sigmas(sigmas, c.shift)
        if c.shift_terminal:  # stretch so that the last σ equals shift_terminal
            one_minus = 1 - sigmas
            sigmas = 1 - one_minus / (one_minus[-1] / (1 - c.shift_terminal))
        if self._respacing:
            sigmas = respace_sigmas(self._respacing, sigmas, len(sigmas))
        return sigmas

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
    ) -> None:
        """σ grid from σ_max to σ_min (or the given σ / timesteps), shifted; the final σ is 0."""
        T = self.config.num_train_timesteps
        if num_inference_steps is None and timesteps is None and sigmas is None:
            raise ValueError("pass num_inference_steps, timesteps or sigmas")
        n = num_inference_steps or len(sigmas if sigmas is not None else timesteps)
        custom_t = None if timesteps is None else np.asarray(timesteps, dtype=np.float32)
        if sigmas is not None:
            sig = np.asarray(sigmas, dtype=np.float32)
        elif custom_t is not None:
            sig = custom_t / T
        else:
            sig = np.linspace(self.sigma_max * T, self.sigma_min * T, n) / T
        sig_t = torch.from_numpy(np.asarray(self._shifted(sig, mu))).to(torch.float32)
        ts = torch.from_numpy(custom_t) if custom_t is not None else sig_t * T
        last = torch.zeros(1)
        if self.config.invert_sigmas:
            sig_t, last = 1.0 - sig_t, torch.ones(1)
            ts = sig_t * T
        self.num_inference_steps = n
        self.timesteps = ts.to(device=device, dtype=torch.float32)
        self.sigmas = torch.cat([sig_t, last])
        self._reset()

    def scale_noise(self, sample: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process x_σ = (1 − σ) x_0 + σ ε at the σ of each timestep."""
        sigmas = self.sigmas.to(device=sample.device, dtype=sample.dtype)
        sigma = broadcast_to(sigmas[self._step_indices(torch.as_tensor(timestep).to(sample.device))], sample)
        return sigma * noise + (1.0 - sigma) * sample

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.scale_noise(original, timesteps, noise)

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
        if self.config.stochastic_sampling:  # jump to x̂_0, re-noise to σ_next
            x0 = x - sigma * model_output
            noise = randn_tensor(x.shape, generator, x.device, x.dtype)
            prev = (1.0 - sigma_next) * x0 + sigma_next * noise
        else:
            prev = x + (sigma_next - sigma) * model_output
        self._step_index += 1
        return self._output(return_dict, prev.to(model_output.dtype))
