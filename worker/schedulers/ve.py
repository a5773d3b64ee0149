"""Schedulers over a σ grid in the k-diffusion (variance-exploding) form x = x_0 + σ ε.

The model sees x / √(σ²+1) (the VP sample) and the fractional training timestep of σ; the
sampler moves x along decreasing σ. `sigmas` has one more entry than the step grid: the final σ
(0 by default).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .base import broadcast_to
from .schedules import (
    check_choice,
    check_num_steps,
    respace_sigmas,
    sigma_schedule_name,
    sigma_to_t,
    sigmas_at,
    timestep_grid,
)
from .vp import VPScheduleMixin

FINAL_SIGMAS_TYPES = ("zero", "sigma_min")


class VEScheduleMixin(VPScheduleMixin):
    """σ tables, input scaling, initial noise and add_noise for k-diffusion style samplers."""

    sigmas: torch.Tensor  # (steps + 1,) on the CPU, descending, last = final σ
    num_inference_steps: int | None

    def _build_sigma_tables(self) -> None:
        self._build_tables()
        option = self._option
        self._respacing = sigma_schedule_name(
            option("use_karras_sigmas") or False, option("use_exponential_sigmas") or False,
            option("use_beta_sigmas") or False,
        )
        check_choice("final_sigmas_type", option("final_sigmas_type", "zero"), FINAL_SIGMAS_TYPES)
        self._build_train_sigmas()
        self.set_timesteps(self.config.num_train_timesteps)
        self.num_inference_steps = None

    # -- the σ grid ---------------------------------------------------------------------------

    def _grid(
        self, num_steps: int | None, timesteps: Sequence[float] | None, sigmas: Sequence[float] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(timesteps (n,), σ (n + 1,)) for the requested steps, custom timesteps or custom σ."""
        self._check_timestep_args(num_steps, timesteps, sigmas)
        if sigmas is not None:
            sig = np.asarray(sigmas, dtype=np.float32)
            return sigma_to_t(sig[:-1], self._log_sigmas), sig
        if timesteps is not None:
            if self._respacing:
                raise ValueError(f"custom timesteps cannot be combined with {self._respacing} sigmas")
            ts = np.asarray(timesteps, dtype=np.float32)
        else:
            c = self.config
            n = check_num_steps(num_steps, c.num_train_timesteps)
            ts = timestep_grid(c.timestep_spacing, c.num_train_timesteps, n, c.steps_offset, rounded=False)
            ts = ts.astype(np.float32)
        sig = self._sigmas_for(ts)
        if self._respacing:
            lo, hi = self._option("sigma_min"), self._option("sigma_max")
            sig = respace_sigmas(self._respacing, sig, len(ts), lo, hi)
            ts = sigma_to_t(sig, self._log_sigmas)
        return ts, np.concatenate([sig, [self._final_sigma()]]).astype(np.float32)

    def _sigmas_for(self, ts: np.ndarray) -> np.ndarray:
        """σ at the grid's timesteps (before any Karras/exponential/β respacing, which keeps only its ends)."""
        return sigmas_at(ts, self._train_sigmas)

    def _grid_tensors(
        self, num_steps: int | None, timesteps: Sequence[float] | None, sigmas: Sequence[float] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`_grid` as tensors (float32 timesteps (n,), σ (n + 1,)); records n as `num_inference_steps`."""
        ts, sig = self._grid(num_steps, timesteps, sigmas)
        self.num_inference_steps = len(ts)
        return torch.from_numpy(np.asarray(ts, dtype=np.float32)), torch.from_numpy(sig)

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        """Build the σ grid (and its fractional timesteps) for this job: one model call per σ."""
        self._finish_set_timesteps(*self._grid_tensors(num_inference_steps, timesteps, sigmas), device)

    def _final_sigma(self) -> float:
        if self._option("final_sigmas_type", "zero") == "sigma_min":
            return float(self._train_sigmas[0])
        return 0.0

    # -- shared interface ---------------------------------------------------------------------

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """Std of the starting noise: σ_max, or √(σ_max²+1) for `leading` spacing (Diffusers' rule)."""
        sigma_max = self.sigmas.max()
        return sigma_max if self.config.timestep_spacing in ("linspace", "trailing") else (sigma_max**2 + 1) ** 0.5

    def _input_sigma(self) -> torch.Tensor:
        return self.sigmas[self._step_index]

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor) -> torch.Tensor:
        """x / √(σ²+1): the VP sample the network was trained on."""
        self._init_step_index(timestep)
        return sample / ((self._input_sigma() ** 2 + 1) ** 0.5)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x = x_0 + σ ε at the σ of each of `timesteps` on the current grid."""
        sigmas = self.sigmas.to(device=original.device, dtype=original.dtype)
        sigma = sigmas[self._step_indices(timesteps.to(original.device))]
        return original + broadcast_to(sigma, original) * noise

    def _finish_set_timesteps(self, timesteps: torch.Tensor, sigmas: torch.Tensor, device: Any,
                              dtype: torch.dtype = torch.float32) -> None:
        self.timesteps = timesteps.to(device=device, dtype=dtype)
        self.sigmas = sigmas.to("cpu")  # indexed on the host every step
        self._reset()
