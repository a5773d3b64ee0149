"""Pseudo numerical methods (Liu et al. 2022, PNDM): PRK warm-up, then PLMS (Adams–Bashforth on ε).

Every update goes through the transfer φ(x_t, ε, t → t') of eq. 9; the methods differ only in
which combination of past ε's they feed it. Model outputs are combined raw and converted to ε
once, at the sample being transferred (as Diffusers does).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from worker.runtime.configuration import register_to_config

from .base import KARRAS_FAMILY, Generator
from .prediction import denoise_vp
from .schedules import check_num_steps, timestep_grid
from .vp import VPScheduleMixin

# Adams–Bashforth weights for the newest-first history of ε (PLMS, eq. 12), by history length.
PLMS_WEIGHTS = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}
# Runge–Kutta weights of the 4 evaluations of one PRK step.
PRK_WEIGHTS = (1 / 6, 1 / 3, 1 / 3, 1 / 6)


def transfer(x: torch.Tensor, eps: torch.Tensor, ab_t: torch.Tensor, ab_prev: torch.Tensor) -> torch.Tensor:
    """PNDM eq. 9: x_{t'} = √(ᾱ'/ᾱ) x_t − (ᾱ' − ᾱ) ε / (ᾱ √(1−ᾱ') + √(ᾱ (1−ᾱ) ᾱ'))."""
    denom = ab_t * (1 - ab_prev) ** 0.5 + (ab_t * (1 - ab_t) * ab_prev) ** 0.5
    return (ab_prev / ab_t) ** 0.5 * x - (ab_prev - ab_t) * eps / denom


class PNDMScheduler(VPScheduleMixin):
    """PLMS with a 4th-order Runge–Kutta warm-up (3 steps × 4 calls), or a 2-call warm-up if
    `skip_prk_steps` (Stable Diffusion's default)."""

    _compatibles = KARRAS_FAMILY
    pndm_order = 4

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Sequence[float] | None = None,
        skip_prk_steps: bool = False,
        set_alpha_to_one: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ) -> None:
        self._build_tables()
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps: int | None = None
        self.prk_timesteps = np.array([], dtype=np.int64)
        self.plms_timesteps: np.ndarray | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._reset()

    def _fresh_state(self) -> dict[str, Any]:
        # counter: calls so far; ets: past model outputs (oldest first); rk_sum: partial RK sum.
        return {**super()._fresh_state(), "counter": 0, "ets": [], "cur_sample": None, "rk_sum": 0}

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        timesteps: Any = None,
        sigmas: Any = None,
    ) -> None:
        self._check_steps_only(timesteps, sigmas)
        c = self.config
        n = check_num_steps(num_inference_steps, c.num_train_timesteps)
        if not c.skip_prk_steps and n < self.pndm_order:
            raise ValueError(f"`num_inference_steps` must be >= {self.pndm_order} when skip_prk_steps is False "
                             f"(the Runge–Kutta warm-up takes {self.pndm_order} steps), got {n}")
        self.num_inference_steps = n
        grid = timestep_grid(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset)[::-1].astype(np.int64)
        if c.skip_prk_steps:  # the second-to-last grid point is visited twice (warm-up pair)
            self.prk_timesteps = np.array([], dtype=np.int64)
            plms = np.concatenate([grid[:-1], grid[-2:-1], grid[-1:]])[::-1]
        else:
            half = c.num_train_timesteps // n // 2
            # Each of the top 3 steps t visits t, t − h/2, t − h/2, t − h (h = T // n).
            prk = grid[-self.pndm_order:].repeat(2) + np.tile([0, half], self.pndm_order)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1].copy()
            plms = grid[:-3][::-1]
        self.plms_timesteps = plms.copy()
        self.timesteps = torch.from_numpy(np.concatenate([self.prk_timesteps, plms]).astype(np.int64)).to(device)
        self._reset()

    def _transfer(self, x: torch.Tensor, out: torch.Tensor, t: int, prev_t: int) -> torch.Tensor:
        ab_t = self.alphas_cumprod[t]
        ab_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        eps = denoise_vp(self.config.prediction_type, out, x, ab_t**0.5, (1 - ab_t) ** 0.5).eps
        return transfer(x, eps, ab_t, ab_prev)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> Any:
        """A PRK warm-up call while any are left (unless `skip_prk_steps`), else a PLMS call."""
        if self.counter < len(self.prk_timesteps) and not self.config.skip_prk_steps:
            return self.step_prk(model_output, timestep, sample, return_dict)
        return self.step_plms(model_output, timestep, sample, return_dict)

    def step_prk(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, return_dict: bool = True
    ) -> Any:
        """One call of the Runge–Kutta warm-up (the model evaluated at `prk_timesteps[counter]`)."""
        self._require_timesteps()
        prev = self._step_prk(model_output, int(timestep), sample)
        self.counter += 1
        return self._output(return_dict, prev)

    def step_plms(
        self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor, return_dict: bool = True
    ) -> Any:
        """One linear-multistep call (after the warm-up, or from the start with `skip_prk_steps`)."""
        self._require_timesteps()
        prev = self._step_plms(model_output, int(timestep), sample)
        self.counter += 1
        return self._output(return_dict, prev)

    def _step_prk(self, out: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        """Call k (0..3) of a Runge–Kutta step from t_start: accumulate, then transfer."""
        k = self.counter % 4
        prev_t = t - (0 if self.counter % 2 else self.config.num_train_timesteps // self.num_inference_steps // 2)
        t_start = int(self.prk_timesteps[self.counter // 4 * 4])
        if k == 0:
            self.ets = [*self.ets, out]
            self.cur_sample = sample
        if k < 3:
            self.rk_sum = self.rk_sum + PRK_WEIGHTS[k] * out
        else:
            out, self.rk_sum = self.rk_sum + PRK_WEIGHTS[3] * out, 0
        return self._transfer(self.cur_sample, out, t_start, prev_t)

    def _step_plms(self, out: torch.Tensor, t: int, sample: torch.Tensor) -> torch.Tensor:
        """Linear multistep on ε; with no history, a 2-call Heun-like warm-up (counter 0 and 1)."""
        if not self.config.skip_prk_steps and len(self.ets) < 3:
            raise ValueError("PNDMScheduler: PLMS steps need the 3 PRK warm-up steps first")
        stride = self.config.num_train_timesteps // self.num_inference_steps
        prev_t = t - stride
        if self.counter == 1:  # second call of the warm-up: re-evaluated at the same pair of timesteps
            prev_t, t = t, t + stride
        else:
            self.ets = [*self.ets[-3:], out]
        if len(self.ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(self.ets) == 1 and self.counter == 1:
            out, sample, self.cur_sample = (out + self.ets[-1]) / 2, self.cur_sample, None
        else:  # the newest (up to) 4 outputs; a history set from outside may hold more
            weights = PLMS_WEIGHTS[min(len(self.ets), 4)]
            out = sum(w * e for w, e in zip(weights, reversed(self.ets)))
        return self._transfer(sample, out, t, prev_t)
