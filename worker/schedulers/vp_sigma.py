"""VP solvers that step over a σ grid at integer timesteps (DPM-Solver family, UniPC).

The model sees x_t unscaled; each grid point's σ (VE) maps to VP (α_t, σ_t) and λ_t. The grid
is the timestep spacing's integer timesteps (or custom ones), a Karras / exponential / beta σ
ramp over the whole training range whose timesteps are read back by σ → t interpolation, or a
flow-matching σ grid (`use_flow_sigmas`, for FLUX / SD3 models).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .base import broadcast_to
from .dpm_solver import Point, flow_point, vp_point
from .prediction import DIFFUSION_PREDICTION_TYPES, Denoised, denoise_vp, dynamic_threshold
from .schedules import (
    TIME_SHIFTS,
    check_choice,
    check_num_steps,
    respace_sigmas,
    sigma_schedule_name,
    sigma_to_t,
    shift_sigmas,
    sigmas_at,
    timestep_grid,
)
from .ve import FINAL_SIGMAS_TYPES
from .vp import VPScheduleMixin


class VPSigmaScheduleMixin(VPScheduleMixin):
    """Grid construction, add_noise and model-output conversion shared by DPM-Solver and UniPC.

    With `use_flow_sigmas` the grid is a flow-matching σ ∈ (0, 1) (shifted by `flow_shift`, or
    by e^μ when `set_timesteps` gets a FLUX μ), each point's (α, σ) is (1 − σ, σ), and the
    solvers integrate the same λ = log(α/σ) as for VP models: the rectified-flow ODE.
    """

    sigmas: torch.Tensor  # (n + 1,), σ of each grid point (VE, or flow σ) and the final σ
    _prediction_types = (*DIFFUSION_PREDICTION_TYPES, "flow_prediction")
    # Diffusers' per-class quirks of the respaced grids:
    _round_respaced_always = False  # UniPC rounds Karras timesteps even for squaredcos_cap_v2
    _final_sigma_min_is_grid_end = False  # UniPC's "sigma_min" final σ is the ramp's last σ

    def _build_sigma_tables(self) -> None:
        self._build_tables()
        c = self.config
        check_choice("final_sigmas_type", c.final_sigmas_type, FINAL_SIGMAS_TYPES)
        check_choice("time_shift_type", self._option("time_shift_type", "exponential"), list(TIME_SHIFTS))
        self._flow = bool(self._option("use_flow_sigmas", False))
        self._to_point = flow_point if self._flow else vp_point
        self._respacing = sigma_schedule_name(
            c.use_karras_sigmas, c.use_exponential_sigmas or self._option("use_lu_lambdas", False), c.use_beta_sigmas
        )
        self._train_alpha_bar = self._build_train_sigmas()  # ᾱ_t (T,); not the _alpha_bar() method
        self._set_grid(c.num_train_timesteps)
        self.num_inference_steps = None

    def _lambda_clipped_top(self) -> int:
        """Grid top: T minus the timesteps whose λ_t is below `lambda_min_clipped` (if any)."""
        lam = 0.5 * torch.log(self._train_alpha_bar) - 0.5 * torch.log(1 - self._train_alpha_bar)
        clip = self._option("lambda_min_clipped", -float("inf"))
        return self.config.num_train_timesteps - int(torch.searchsorted(torch.flip(lam, [0]), clip))

    # -- flow-matching grids ------------------------------------------------------------------

    def _flow_base_sigmas(self, n: int) -> np.ndarray:
        """DPM-Solver's flow grid before shifting: 1 − linspace(1, 1/T, n + 1), top n points."""
        T = self.config.num_train_timesteps
        return (1.0 - np.linspace(1, 1 / T, n + 1))[::-1][:-1].copy()

    def _flow_shifted(self, sigmas: np.ndarray, mu: float | None) -> np.ndarray:
        """Shift by `flow_shift`, or by e^μ (FLUX's exponential dynamic shift) when μ is given."""
        if mu is None:
            return shift_sigmas(sigmas, self.config.flow_shift)
        if not (self._option("use_dynamic_shifting") and self._option("time_shift_type") == "exponential"):
            raise ValueError(f"{type(self).__name__}: mu needs use_dynamic_shifting=True and "
                             "time_shift_type='exponential'")
        return shift_sigmas(sigmas, math.exp(mu))

    def _flow_grid(self, n: int, sigmas: Any, mu: float | None) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps ⌊σ·T⌋, σ) on the flow grid, from `n` steps or custom σ (shifted either way)."""
        base = self._flow_base_sigmas(n) if sigmas is None else np.array(sigmas, dtype=np.float64)
        sig = self._flow_shifted(base, mu)
        return np.trunc(sig * self.config.num_train_timesteps), sig

    # -- the grid -----------------------------------------------------------------------------

    def _respaced_grid(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, σ) of a Karras / exponential / beta ramp over the training σ range."""
        option = self._option
        full_range = self._train_sigmas[::-1]  # σ_max … σ_min of training
        sig = respace_sigmas(self._respacing, full_range, n, option("sigma_min"), option("sigma_max"))
        ts = sigma_to_t(sig, self._log_sigmas)
        if self._respacing == "karras" or option("use_lu_lambdas"):
            if self._round_respaced_always or self.config.beta_schedule != "squaredcos_cap_v2":
                ts = np.round(ts)
        return ts, sig

    def _spaced_grid(self, n: int, timesteps: Any) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps, σ) of the timestep spacing (or custom integer timesteps), σ read off the table."""
        c, option = self.config, self._option
        if timesteps is not None:
            ts = np.asarray(timesteps, dtype=np.int64).astype(np.float64)
        else:
            ts = timestep_grid(
                option("timestep_spacing", "linspace"), c.num_train_timesteps, n, option("steps_offset", 0),
                drop_last=True, last_timestep=self._lambda_clipped_top(),
            )
        return ts, sigmas_at(ts, self._train_sigmas)

    def _grid(self, n: int, timesteps: Any, sigmas: Any, mu: float | None) -> tuple[np.ndarray, np.ndarray, float]:
        """(timesteps (n,), σ (n,), σ_min for a `sigma_min` final σ)."""
        train_min = float(self._train_sigmas[0])  # σ at t = 0
        if self._respacing:
            if timesteps is not None or sigmas is not None:
                raise ValueError(f"custom timesteps or sigmas cannot be combined with {self._respacing} sigmas")
            ts, sig = self._respaced_grid(n)
            return ts, sig, float(sig[-1]) if self._final_sigma_min_is_grid_end else train_min
        if self._flow:
            if timesteps is not None:
                raise ValueError("with use_flow_sigmas pass custom sigmas, not timesteps")
            ts, sig = self._flow_grid(n, sigmas, mu)
            return ts, sig, float(sig[-1]) if self._final_sigma_min_is_grid_end else train_min
        if sigmas is not None:  # VE σ: timesteps read back from the table
            sig = np.asarray(sigmas, dtype=np.float64)
            return np.round(sigma_to_t(sig, self._log_sigmas)), sig, train_min
        ts, sig = self._spaced_grid(n, timesteps)
        return ts, sig, train_min

    def _set_grid(
        self, num_inference_steps: int | None, device: Any = None, timesteps: Any = None, sigmas: Any = None,
        mu: float | None = None,
    ) -> None:
        """Build the grid: n steps, or custom integer `timesteps`, or custom `sigmas` (these set n)."""
        if timesteps is not None and sigmas is not None:
            raise ValueError("pass custom timesteps or custom sigmas, not both")
        custom = timesteps if timesteps is not None else sigmas
        if custom is None and num_inference_steps is None:
            raise ValueError("pass num_inference_steps, timesteps or sigmas")
        n = check_num_steps(len(custom) if custom is not None else num_inference_steps,
                            self.config.num_train_timesteps)
        ts, sig, sigma_min = self._grid(n, timesteps, sigmas, mu)
        final = sigma_min if self.config.final_sigmas_type == "sigma_min" else 0.0
        self._finish_set_timesteps(ts.astype(np.int64), np.concatenate([sig, [final]]).astype(np.float32), device)

    def _finish_set_timesteps(self, timesteps: np.ndarray, sigmas: np.ndarray, device: Any) -> None:
        self.timesteps = torch.from_numpy(timesteps).to(device=device, dtype=torch.int64)
        self.sigmas = torch.from_numpy(sigmas)
        self.num_inference_steps = len(timesteps)
        self._reset()

    def _point(self, index: int) -> Point:
        return self._to_point(self.sigmas[index])

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
        p = self._to_point(broadcast_to(sigmas[self._step_indices(timesteps.to(original.device))], original))
        return p.alpha * original + p.sigma * noise

    def index_for_timestep(self, timestep: float | torch.Tensor, schedule: torch.Tensor | None = None) -> int:
        """As the base, but a timestep not on the grid maps to the last step (Diffusers' rule)."""
        schedule = self.timesteps if schedule is None else schedule
        if not bool((schedule == torch.as_tensor(timestep, device=schedule.device)).any()):
            return len(schedule) - 1
        return super().index_for_timestep(timestep, schedule)
