"""Heun's second-order sampler (Karras et al. 2022, Algorithm 1): two model calls per σ step.

The grid repeats every interior σ: the first call takes an Euler step σ_i → σ_{i+1}, the
second re-evaluates at σ_{i+1} and averages the two slopes. The last step (to σ = 0) is Euler.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from worker.runtime.configuration import register_to_config

from .base import KARRAS_FAMILY, Generator
from .prediction import denoise_ve, limit_x0
from .sampling import euler_update, to_d
from .ve import VEScheduleMixin


def repeat_interior(values: torch.Tensor, keep_last: bool) -> torch.Tensor:
    """[v0, v1, v1, v2, v2, …] — each entry after the first twice (and the last once more if asked)."""
    parts = [values[:1], values[1:-1].repeat_interleave(2) if keep_last else values[1:].repeat_interleave(2)]
    return torch.cat(parts + ([values[-1:]] if keep_last else []))


class HeunStateMixin:
    """The state Heun's two calls per step share: the first slope, the step size and the start sample."""

    def _fresh_state(self) -> dict[str, Any]:
        return {**super()._fresh_state(), "prev_derivative": None, "dt": None, "sample": None}  # type: ignore[misc]

    @property
    def state_in_first_order(self) -> bool:
        return self.dt is None  # type: ignore[attr-defined]


class HeunDiscreteScheduler(HeunStateMixin, VEScheduleMixin):
    """Predictor (Euler) then corrector (trapezoidal) on the probability-flow ODE."""

    _compatibles = KARRAS_FAMILY
    order = 2

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        prediction_type: str = "epsilon",
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._build_sigma_tables()

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        ts_t, sig_t = self._grid_tensors(num_inference_steps, timesteps, sigmas)
        self._finish_set_timesteps(repeat_interior(ts_t, keep_last=False), repeat_interior(sig_t, True), device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> Any:
        self._init_step_index(timestep)
        i = self._step_index
        first = self.state_in_first_order
        sigma, sigma_next = (self.sigmas[i], self.sigmas[i + 1]) if first else (self.sigmas[i - 1], self.sigmas[i])
        # The model was evaluated at σ on the first call and at σ_next on the second.
        x0 = denoise_ve(self.config.prediction_type, model_output, sample, sigma if first else sigma_next)
        x0 = limit_x0(x0, self._option)
        if first:
            d = to_d(sample, x0, sigma)
            self.prev_derivative, self.dt, self.sample = d, sigma_next - sigma, sample
            prev = euler_update(sample, d, sigma, sigma_next)
        else:
            d = (self.prev_derivative + to_d(sample, x0, sigma_next)) / 2
            prev = self.sample + d * self.dt
            self.prev_derivative, self.dt, self.sample = None, None, None
        self._step_index += 1
        return self._output(return_dict, prev, x0)
