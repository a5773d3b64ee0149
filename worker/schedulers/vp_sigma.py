"""VP solvers that step over a σ grid at integer timesteps (DPM-Solver family, UniPC).

The model sees x_t unscaled; each grid point's σ (VE) maps to VP (α_t, σ_t) and λ_t. The grid
is the timestep spacing's integer timesteps, or a Karras / exponential σ ramp over the whole
training range whose timesteps are read back by σ → t interpolation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .base import broadcast_to
from .dpm_solver import Point, vp_point
from .prediction import Denoised, denoise_vp, dynamic_threshold
from .schedules import (
    check_choice,
    check_num_steps,
    respace_sigmas,
    sigma_schedule_name,
    sigma_to_t,
    sigmas_at,
    timestep_grid,
)
from .ve import FINAL_SIGMAS_TYPES
from .vp import VPScheduleMixin


class VPSigmaScheduleMixin(VPScheduleMixin):
    """Grid construction, add_noise and model-output conversion shared by DPM-Solver and UniPC."""

    sigmas: torch.Tensor  # (n + 1,), VE σ of each grid point and the final σ
    # Diffusers' per-class quirks of the respaced grids:
    _round_respaced_always = False  # UniPC rounds Karras timesteps even for squaredcos_cap_v2
    _final_sigma_min_is_grid_end = False  # UniPC's "sigma_min" final σ is the ramp's last σ

    def _build_sigma_tables(self) -> None:
        self._build_tables()
        c = self.config
        if self._option("use_flow_sigmas"):
            raise ValueError("use_flow_sigmas is not supported; use FlowMatchEulerDiscreteScheduler")
        check_choice("final_sigmas_type", c.final_sigmas_type, FINAL_SIGMAS_TYPES)
        self._respacing = sigma_schedule_name(
            c.use_karras_sigmas, c.use_exponential_sigmas or self._option("use_lu_lambdas", False), c.use_beta_sigmas
        )
        self._train_alpha_bar = self._build_train_sigmas()  # ᾱ_t (T,); not the _alpha_bar() method
        self.set_timesteps(c.num_train_timesteps)
        self.num_inference_steps = None

    def _lambda_clipped_top(self) -> int:
        """Grid top: T minus the timesteps whose λ_t is below `lambda_min_clipped` (if any)."""
        lam = 0.5 * torch.log(self._train_alpha_bar) - 0.5 * torch.log(1 - self._train_alpha_bar)
        clip = self._option("lambda_min_clipped", -float("inf"))
        return self.config.num_train_timesteps - int(torch.searchsorted(torch.flip(lam, [0]), clip))

    def _vp_grid(self, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """(int64 timesteps (n,), float32 σ (n + 1,)) for `num_steps` steps."""
        c, option = self.config, self._option
        n = check_num_steps(num_steps, c.num_train_timesteps)
        ts = timestep_grid(
            option("timestep_spacing", "linspace"), c.num_train_timesteps, n, option("steps_offset", 0),
            drop_last=True, last_timestep=self._lambda_clipped_top(),
        )
        final_min = float(self._train_sigmas[0])  # σ at t = 0
        if self._respacing:
            full_range = self._train_sigmas[::-1]  # σ_max … σ_min of training
            sig = respace_sigmas(self._respacing, full_range, n, option("sigma_min"), option("sigma_max"))
            ts = sigma_to_t(sig, self._log_sigmas)
            if self._respacing == "karras" or option("use_lu_lambdas"):
                if self._round_respaced_always or c.beta_schedule != "squaredcos_cap_v2":
                    ts = np.round(ts)
            final_min = float(sig[-1]) if self._final_sigma_min_is_grid_end else final_min
        else:
            sig = sigmas_at(ts, self._train_sigmas)
        final = final_min if c.final_sigmas_type == "sigma_min" else 0.0
        return ts.astype(np.int64), np.concatenate([sig, [final]]).astype(np.float32)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        timesteps: Any = None,
        sigmas: Any = None,
    ) -> None:
        """Build the grid for `num_inference_steps`; these solvers take no custom timesteps or σ."""
        self._check_steps_only(timesteps, sigmas)
        self._finish_set_timesteps(*self._vp_grid(num_inference_steps), device)

    def _finish_set_timesteps(self, timesteps: np.ndarray, sigmas: np.ndarray, device: Any) -> None:
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.sigmas = torch.from_numpy(sigmas)
        self.num_inference_steps = len(timesteps)
        self._reset()

    def _point(self, index: int) -> Point:
        return vp_point(self.sigmas[index])

    def _denoise(self, model_output: torch.Tensor, sample: torch.Tensor) -> Denoised:
        """(x̂_0, ε̂) at the current grid point, with dynamic thresholding of x̂_0 if configured."""
        c = self.config
        if self._option("variance_type") in ("learned", "learned_range"):
            model_output = model_output[:, : sample.shape[1]]  # drop the predicted variance channels
        p = self._point(self._step_index)
        den = denoise_vp(c.prediction_type, model_output, sample, p.alpha, p.sigma)
        if not c.thresholding:
            return den
        x0 = dynamic_threshold(den.x0, c.dynamic_thresholding_ratio, c.sample_max_value)
        return Denoised(x0, (sample - p.alpha * x0) / p.sigma)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t = α_t x_0 + σ_t ε at the grid points of `timesteps`."""
        sigmas = self.sigmas.to(device=original.device, dtype=original.dtype)
        p = vp_point(broadcast_to(sigmas[self._step_indices(timesteps.to(original.device))], original))
        return p.alpha * original + p.sigma * noise

    def index_for_timestep(self, timestep: float | torch.Tensor, schedule: torch.Tensor | None = None) -> int:
        """As the base, but a timestep not on the grid maps to the last step (Diffusers' rule)."""
        schedule = self.timesteps if schedule is None else schedule
        if not bool((schedule == torch.as_tensor(timestep, device=schedule.device)).any()):
            return len(schedule) - 1
        return super().index_for_timestep(timestep, schedule)
