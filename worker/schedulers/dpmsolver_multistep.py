"""DPM-Solver / DPM-Solver++ multistep (Lu et al. 2022): one model call per step, order 1–3."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from worker.runtime.configuration import register_to_config

from .base import KARRAS_FAMILY, Generator, randn_tensor
from .dpm_solver import ALGORITHMS, DATA_PREDICTION, SOLVER_TYPES, dpm_update, multistep_differences
from .schedules import check_choice
from .vp_sigma import VPSigmaScheduleMixin

# Diffusers maps these names onto the closest supported ones instead of failing.
ALGORITHM_ALIASES = {"deis": "dpmsolver++"}
SOLVER_TYPE_ALIASES = {"logrho": "midpoint", "bh1": "midpoint", "bh2": "midpoint"}


def resolve_dpm_config(algorithm_type: str, solver_type: str, final_sigmas_type: str,
                       solver_order: int) -> tuple[str, str]:
    """Check the DPM-Solver options; return (algorithm_type, solver_type) with Diffusers' aliases applied."""
    check_choice("algorithm_type", algorithm_type, list(ALGORITHMS) + list(ALGORITHM_ALIASES))
    check_choice("solver_type", solver_type, list(SOLVER_TYPES) + list(SOLVER_TYPE_ALIASES))
    check_choice("solver_order", solver_order, (1, 2, 3))
    if algorithm_type not in DATA_PREDICTION and final_sigmas_type == "zero":
        raise ValueError(f"final_sigmas_type 'zero' needs algorithm_type dpmsolver++ or sde-dpmsolver++, "
                         f"not {algorithm_type!r}; use final_sigmas_type='sigma_min'")
    return ALGORITHM_ALIASES.get(algorithm_type, algorithm_type), SOLVER_TYPE_ALIASES.get(solver_type, solver_type)


class DPMSolverMultistepScheduler(VPSigmaScheduleMixin):
    """DPM-Solver++(2M) by default; `sde-dpmsolver++` adds noise (stochastic, needs a generator)."""

    _compatibles = KARRAS_FAMILY

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        solver_order: int = 2,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        algorithm_type: str = "dpmsolver++",
        solver_type: str = "midpoint",
        lower_order_final: bool = True,
        euler_at_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_lu_lambdas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
        rescale_betas_zero_snr: bool = False,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ) -> None:
        self.algorithm_type, self.solver_type = resolve_dpm_config(algorithm_type, solver_type, final_sigmas_type,
                                                                   solver_order)
        self._build_sigma_tables()

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        mu: float | None = None,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        """Grid for n steps, custom integer `timesteps`, or custom `sigmas` (flow σ with
        `use_flow_sigmas`, else VE σ); `mu` is FLUX's dynamic shift (flow grids only)."""
        self._set_grid(num_inference_steps, device, timesteps, sigmas, mu)

    def _fresh_state(self) -> dict[str, Any]:
        # History of converted model outputs and their grid indices (newest last).
        return {**super()._fresh_state(), "model_outputs": [], "output_indices": [], "lower_order_nums": 0}

    def _order_now(self) -> int:
        """Solver order for this step: warm up from 1, and drop to 1–2 at the end if configured."""
        c, i, n = self.config, self._step_index, len(self.timesteps)
        short = c.lower_order_final and n < 15
        if i == n - 1 and (c.euler_at_final or short or c.final_sigmas_type == "zero"):
            return 1
        order = min(c.solver_order, self.lower_order_nums + 1)
        return min(order, 2) if (i == n - 2 and short) else order

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> Any:
        self._require_timesteps()
        self._init_step_index(timestep)
        den = self._denoise(model_output, sample)
        m = den.x0 if self.algorithm_type in DATA_PREDICTION else den.eps
        keep = self.config.solver_order
        self.model_outputs = [*self.model_outputs, m][-keep:]
        self.output_indices = [*self.output_indices, self._step_index][-keep:]
        noise = None
        if ALGORITHMS[self.algorithm_type].noise is not None:
            noise = variance_noise if variance_noise is not None else randn_tensor(
                m.shape, generator, m.device, torch.float32)
            noise = noise.to(device=m.device, dtype=torch.float32)
        order = self._order_now()
        outputs = self.model_outputs[::-1][:order]
        points = [self._point(j) for j in self.output_indices[::-1][:order]]
        t = self._point(self._step_index + 1)
        c1_form = self.solver_type if order == 2 else "heun"  # third order uses the exact φ_2 term
        d = multistep_differences(outputs, points, t)
        prev = dpm_update(self.algorithm_type, sample.to(torch.float32), d, points[0], t, c1_form, noise)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.config.solver_order)
        self._step_index += 1
        return self._output(return_dict, prev.to(model_output.dtype))
