"""Linear multistep (k-diffusion `sample_lms`): Adams–Bashforth over σ with exact Lagrange weights."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from worker.runtime.configuration import register_to_config

from .base import KARRAS_FAMILY, Generator
from .prediction import denoise_ve
from .sampling import lms_coefficients, to_d
from .ve import VEScheduleMixin


class LMSDiscreteScheduler(VEScheduleMixin):
    """x_{i+1} = x_i + Σ_j c_j d_{i−j}, c_j = ∫ Lagrange basis over [σ_i, σ_{i+1}], up to `order` 4."""

    _compatibles = KARRAS_FAMILY

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._build_sigma_tables()

    def _fresh_state(self) -> dict[str, Any]:
        return {**super()._fresh_state(), "derivatives": []}  # newest last

    def step(
        self,
        model_output: torch.Tensor,
        timestep: float | torch.Tensor,
        sample: torch.Tensor,
        order: int = 4,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> Any:
        self._init_step_index(timestep)
        i = self._step_index
        sigma = self.sigmas[i]
        x0 = denoise_ve(self.config.prediction_type, model_output, sample, sigma)
        self.derivatives = [*self.derivatives, to_d(sample, x0, sigma)][-order:]
        order = min(i + 1, order)
        coeffs = lms_coefficients(self.sigmas.tolist(), i, order)
        prev = sample + sum(c * d for c, d in zip(coeffs, reversed(self.derivatives)))
        self._step_index += 1
        return self._output(return_dict, prev, x0)
