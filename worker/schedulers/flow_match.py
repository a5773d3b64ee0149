"""Euler sampling of rectified-flow / flow-matching models (Lipman et al. 2023; Esser et al. 2024).

x_σ = (1 − σ) x_0 + σ ε with σ ∈ [0, 1]; the network predicts the velocity v = ε − x_0, so the
ODE step is x ← x + (σ_next − σ) v. Timesteps are σ · T. Resolution-dependent shifting
(SD3 eq. 23) moves σ toward noise: σ' = s σ / (1 + (s − 1) σ); FLUX picks s = e^μ per image
size (`use_dynamic_shifting`, μ passed to `set_timesteps`). The σ math lives in `schedules`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from worker.runtime.configuration import register_to_config

from .base import Generator, SchedulerMixin, broadcast_to, randn_tensor
from .schedules import (
    TIME_SHIFTS,
    check_choice,
    respace_sigmas,
    shift_sigmas,
    sigma_schedule_name,
    stretch_to_terminal,
)

__all__ = ["FlowMatchEulerDiscreteScheduler", "FlowMatchSchedulerMixin", "TIME_SHIFTS", "shift_sigmas"]


def check_float_timestep(name: str, timestep: Any) -> None:
    """Flow schedulers take σ·T timesteps, not loop indices (`enumerate(timesteps)` is a common slip)."""
    if isinstance(timestep, int) or (isinstance(timestep, torch.Tensor) and not timestep.is_floating_point()):
        raise ValueError(f"{name}.step takes one of scheduler.timesteps (float), not an integer index")


def custom_grid_length(num_inference_steps: int | None, timesteps: Any, sigmas: Any) -> int:
    """The number of steps implied by the arguments of `set_timesteps`, checked for consistency."""
    if num_inference_steps is None and timesteps is None and sigmas is None:
        raise ValueError("pass num_inference_steps, timesteps or sigmas")
    if sigmas is not None and timesteps is not None and len(sigmas) != len(timesteps):
        raise ValueError(f"sigmas ({len(sigmas)}) and timesteps ({len(timesteps)}) must have the same length")
    given = sigmas if sigmas is not None else timesteps
    if num_inference_steps is not None and given is not None and len(given) != num_inference_steps:
        raise ValueError(f"num_inference_steps={num_inference_steps} but {len(given)} sigmas/timesteps were given")
    return int(num_inference_steps if num_inference_steps is not None else len(given))


class FlowMatchSchedulerMixin(SchedulerMixin):
    """The training σ table, the shift and the forward process shared by flow-matching schedulers."""

    sigmas: torch.Tensor  # (steps + 1,), last = final σ (0)

    def _build_flow_tables(self, shift: float, shifted: bool = True) -> None:
        T = self.config.num_train_timesteps
        train = torch.from_numpy(np.linspace(1, T, T, dtype=np.float32)[::-1].copy())
        sigmas = train / T
        sigmas = shift_sigmas(sigmas, shift) if shifted else sigmas
        self.timesteps = sigmas * T
        self.sigmas = sigmas
        self.sigma_min, self.sigma_max = float(sigmas[-1]), float(sigmas[0])
        self.num_inference_steps: int | None = None
        self._shift = shift
        self._reset()

    @property
    def shift(self) -> float:
        """The static shift s in use (the config's `shift` unless changed with `set_shift`)."""
        return self._shift

    def set_shift(self, shift: float) -> None:
        self._shift = shift

    @property
    def init_noise_sigma(self) -> float:
        return 1.0

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        return sample

    def _default_sigmas(self, n: int) -> np.ndarray:
        """n σ evenly spaced in t from the table's σ_max to σ_min (before shifting)."""
        T = self.config.num_train_timesteps
        return np.linspace(self.sigma_max * T, self.sigma_min * T, n) / T

    def scale_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Forward process x_σ = (1 − σ) x_0 + σ ε at the σ of each timestep (image-to-image)."""
        if noise is None:
            raise ValueError("scale_noise needs the noise tensor")
        sigmas = self.sigmas.to(device=sample.device, dtype=sample.dtype)
        sigma = broadcast_to(sigmas[self._step_indices(torch.as_tensor(timestep).to(sample.device))], sample)
        return sigma * noise + (1.0 - sigma) * sample

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.scale_noise(original, timesteps, noise)


class FlowMatchEulerDiscreteScheduler(FlowMatchSchedulerMixin):
    """Euler ODE (or stochastic re-noising) steps over shifted σ ∈ (0, 1]."""

    _compatibles: tuple[str, ...] = ("FlowMatchHeunDiscreteScheduler",)

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
        self._build_flow_tables(shift, shifted=not use_dynamic_shifting)

    def _shifted(self, sigmas: np.ndarray, mu: float | None) -> np.ndarray:
        c = self.config
        if c.use_dynamic_shifting:
            sigmas = TIME_SHIFTS[c.time_shift_type](mu, sigmas)
        else:
            sigmas = shift_sigmas(sigmas, self.shift)
        if c.shift_terminal:
            sigmas = stretch_to_terminal(sigmas, c.shift_terminal)
        if self._respacing:
            sigmas = respace_sigmas(self._respacing, sigmas, len(sigmas))
        return sigmas

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        sigmas: Sequence[float] | None = None,
        mu: float | None = None,
        timesteps: Sequence[float] | None = None,
    ) -> None:
        """σ grid from σ_max to σ_min (or the given σ / timesteps), shifted; the final σ is 0.

        Custom `timesteps` without `sigmas` are used as given, while their σ = t/T go through
        the shift (as in Diffusers).
        """
        if self.config.use_dynamic_shifting and mu is None:
            raise ValueError("use_dynamic_shifting needs set_timesteps(..., mu=...)")
        n = custom_grid_length(num_inference_steps, timesteps, sigmas)
        T = self.config.num_train_timesteps
        custom_t = None if timesteps is None else np.asarray(timesteps, dtype=np.float32)
        if sigmas is not None:
            sig = np.asarray(sigmas, dtype=np.float32)
        else:
            sig = custom_t / T if custom_t is not None else self._default_sigmas(n)
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

    def _token_sigmas(self, per_token_timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token (σ, σ_next): σ = t/T, σ_next = the largest grid σ below it (LTX-Video)."""
        sigma = per_token_timesteps / self.config.num_train_timesteps  # (B, N)
        grid = self.sigmas[:, None, None]  # (n + 1, 1, 1)
        below = grid < sigma[None] - 1e-6
        sigma_next = (below * grid).max(dim=0).values
        return sigma[..., None], sigma_next[..., None]

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
        per_token_timesteps: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Any:
        """x ← x + (σ_next − σ) v; with `stochastic_sampling`, jump to x̂_0 and re-noise to σ_next.

        `s_churn`, `s_tmin`, `s_tmax` and `s_noise` are accepted for Diffusers' signature and unused.
        """
        check_float_timestep(type(self).__name__, timestep)
        self._init_step_index(timestep)
        x = sample.to(torch.float32)
        if per_token_timesteps is not None:  # Diffusers steps per-token grids by +(σ − σ_next) v
            sigma, sigma_next = self._token_sigmas(per_token_timesteps)
            dt = sigma - sigma_next
        else:
            sigma, sigma_next = self.sigmas[self._step_index], self.sigmas[self._step_index + 1]
            dt = sigma_next - sigma
        if self.config.stochastic_sampling:
            x0 = x - sigma * model_output
            noise = randn_tensor(x.shape, generator, x.device, x.dtype)
            prev = (1.0 - sigma_next) * x0 + sigma_next * noise
        else:
            prev = x + dt * model_output
        self._step_index += 1
        prev = prev if per_token_timesteps is not None else prev.to(model_output.dtype)
        return self._output(return_dict, prev)
