"""DPM-Solver / DPM-Solver++ single-step (Lu et al. 2022, Algorithms 1–2).

Steps are grouped: a group of order k spends k model calls (grid points) on one high-order
update from the group's first sample; the orders of the groups come from `singlestep_orders`.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from worker.runtime.configuration import register_to_config

from .base import KARRAS_FAMILY, Generator, randn_tensor
from .dpm_solver import ALGORITHMS, DATA_PREDICTION, dpm_update, singlestep_differences
from .dpmsolver_multistep import resolve_dpm_config
from .vp_sigma import VPSigmaScheduleMixin

logger = logging.getLogger(__name__)


def singlestep_orders(steps: int, order: int, lower_order_final: bool, final_zero: bool) -> list[int]:
    """The order of each step: repeated [1, 2, …, order] groups, the tail shortened if asked.

    With `lower_order_final` the last group ends on low orders (better for few steps); a final
    σ of 0 always ends on a first-order step.
    """
    group = list(range(1, order + 1))
    if lower_order_final:
        full, rest = divmod(steps, order)
        if order > 1 and rest == 0:
            full, rest = full - 1, order
        tail = {3: {1: [1], 2: [1, 2], 3: [1, 2, 1]}, 2: {1: [1], 2: [1, 1]}}.get(order, {}).get(rest, [])
        orders = group * full + tail
    else:
        orders = group * (steps // order)
    if final_zero and orders:
        orders[-1] = 1
    return orders


class DPMSolverSinglestepScheduler(VPSigmaScheduleMixin):
    """DPM-Solver++ (2S/3S by `solver_order`) with Diffusers' step grouping."""

    _compatibles = KARRAS_FAMILY
    _round_respaced_always = True

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
        lower_order_final: bool = False,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        final_sigmas_type: str = "zero",
        lambda_min_clipped: float = -float("inf"),
        variance_type: str | None = None,
        use_dynamic_shifting: bool = False,
        time_shift_type: str = "exponential",
    ) -> None:
        self.algorithm_type, self.solver_type = resolve_dpm_config(algorithm_type, solver_type, final_sigmas_type,
                                                                   solver_order)
        if algorithm_type == "sde-dpmsolver":
            raise ValueError("algorithm_type 'sde-dpmsolver' is not single-step; allowed: dpmsolver, dpmsolver++, "
                             "sde-dpmsolver++")
        self.order_list: list[int] = []
        self._build_sigma_tables()

    def _fresh_state(self) -> dict[str, Any]:
        # history: newest-last (converted output, grid index); sample: the current group's start.
        return {**super()._fresh_state(), "history": [], "sample": None}

    def _lower_order_final(self, steps: int) -> bool:
        c = self.config
        if not c.lower_order_final and (steps % c.solver_order or c.final_sigmas_type == "zero"):
            logger.info("%s: using lower_order_final=True for %d steps (uneven groups or a final σ of 0)",
                           type(self).__name__, steps)
            return True
        return c.lower_order_final

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        mu: float | None = None,
        timesteps: Sequence[int] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        """As the multistep solver's; also plans the order of each step."""
        self._set_grid(num_inference_steps, device, timesteps, sigmas, mu)
        c, n = self.config, self.num_inference_steps
        self.order_list = singlestep_orders(n, c.solver_order, self._lower_order_final(n),
                                            c.final_sigmas_type == "zero")

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> Any:
        self._require_timesteps()
        self._init_step_index(timestep)
        i = self._step_index
        den = self._denoise(model_output, sample)
        m = den.x0 if self.algorithm_type in DATA_PREDICTION else den.eps
        self.history = [*self.history, (m, i)][-self.config.solver_order:]
        noise = None
        if ALGORITHMS[self.algorithm_type].noise is not None:
            noise = randn_tensor(m.shape, generator, m.device, m.dtype)
        order = min(self.order_list[i], len(self.history))
        if order == 1:
            self.sample = sample
        group = self.history[::-1][:order]  # newest first; the oldest is the group's start
        outputs, points = [o for o, _ in group], [self._point(j) for _, j in group]
        t = self._point(i + 1)
        d = singlestep_differences(outputs, points, t, self.solver_type)
        c1_form = self.solver_type if order == 2 else "heun"
        prev = dpm_update(self.algorithm_type, self.sample, d, points[-1], t, c1_form, noise)
        self._step_index += 1
        return self._output(return_dict, prev)
