"""Heun's method on the flow-matching ODE (Karras et al. 2022, Algorithm 2, with σ ∈ [0, 1]).

As in `heun.py`, every interior σ appears twice: the first call takes an Euler step with the
velocity v (= dx/dσ), the second evaluates v at σ_next and steps again from the start with the
mean of both slopes. Optional churn (S_churn) raises σ to σ̂ = σ (1 + γ) with fresh noise first.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from worker.runtime.configuration import register_to_config

from .base import Generator
from .flow_match import FlowMatchSchedulerMixin, check_float_timestep, custom_grid_length
from .heun import HeunStateMixin, repeat_interior
from .sampling import churn, churn_gamma
from .schedules import check_num_steps, shift_sigmas


class FlowMatchHeunDiscreteScheduler(HeunStateMixin, FlowMatchSchedulerMixin):
    """Second-order (two model calls per σ step) sampler for flow-matching models."""

    _compatibles: tuple[str, ...] = ("FlowMatchEulerDiscreteScheduler",)
    order = 2

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0) -> None:
        self._build_flow_tables(shift)

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: torch.device | str | None = None,
        sigmas: list[float] | np.ndarray | None = None, mu: float | None = None,
    ) -> None:
        """Shifted σ grid, interior points doubled; the final σ is 0.

        Kiln extensions (Diffusers' class takes neither, so its FLUX pipeline cannot use it):
        `sigmas`, an unshifted grid in (0, 1] such as FLUX's linspace(1, 1/n, n), shifted as
        FlowMatchEuler shifts custom sigmas; and a FLUX-style μ, whose exponential time shift is the
        static shift with s = e^μ, so the grid is the one FlowMatchEuler builds with
        `use_dynamic_shifting` and that μ.
        """
        T = self.config.num_train_timesteps
        shift = self.config.shift if mu is None else math.exp(mu)
        n = custom_grid_length(num_inference_steps, None, sigmas)
        if sigmas is not None:
            base = np.asarray(sigmas, dtype=np.float64)
            if base.ndim != 1 or not n or not np.all((base > 0) & (base <= 1)):
                raise ValueError("sigmas must be a non-empty 1-D sequence of values in (0, 1]")
        else:
            n = check_num_steps(n, T)
            base = self._default_sigmas(n) if mu is None else np.linspace(T, 1, n) / T
        sig = torch.from_numpy(np.asarray(shift_sigmas(base, shift))).to(torch.float32)
        ts = sig * T
        self.num_inference_steps = n
        self._finish(repeat_interior(ts, keep_last=False), repeat_interior(torch.cat([sig, torch.zeros(1)]), True),
                     device)

    def _finish(self, timesteps: torch.Tensor, sigmas: torch.Tensor, device: Any) -> None:
        self.timesteps = timesteps.to(device=device)
        self.sigmas = sigmas
        self._reset()

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
        check_float_timestep(type(self).__name__, timestep)
        self._init_step_index(timestep)
        i, first = self._step_index, self.state_in_first_order
        sigma, sigma_next = (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        gamma = churn_gamma(s_churn, len(self.sigmas) - 1, sigma, s_tmin, s_tmax)
        x, sigma_hat = churn(sample.to(torch.float32), sigma, gamma, s_noise, generator, model_output)
        if first:  # x̂_0 = x − σ v, so dx/dσ̂ = (x − x̂_0)/σ̂ = v σ/σ̂
            # Formed through x̂_0 as Diffusers does: the fp32 roundings then agree to the last bit.
            d = (x - (x - model_output * sigma)) / sigma_hat
            self.prev_derivative, self.dt, self.sample = d, sigma_next - sigma_hat, x
            prev = x + d * self.dt
        else:  # the model ran at σ_next: its slope is v itself; average with the first slope
            d = 0.5 * (self.prev_derivative + (x - (x - model_output * sigma_next)) / sigma_next)
            prev = self.sample + d * self.dt
            self.prev_derivative, self.dt, self.sample = None, None, None
        self._step_index += 1
        return self._output(return_dict, prev.to(model_output.dtype))
