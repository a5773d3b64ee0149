"""DPM-Solver-2 in k-diffusion's form (`sample_dpm_2`; Lu et al. 2022 with Karras' σ grid).

Each σ step σ_i → σ_{i+1} takes an Euler step to the geometric midpoint σ_mid = √(σ_i σ_{i+1}),
evaluates the model there and uses that slope for the full step. The last step is plain Euler.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from worker.runtime.configuration import register_to_config

from .base import KARRAS_FAMILY, Generator
from .prediction import denoise_ve
from .sampling import euler_update, to_d
from .schedules import sigma_to_t
from .ve import VEScheduleMixin


def _pair_up(values: torch.Tensor) -> torch.Tensor:
    """[v0, v1, v1, …, v_n, v_n, v_n] (2n + 2 entries): Diffusers' public σ tables of this sampler.

    The final σ (0) is paired like the others and then repeated once more, so `sigmas` and
    `sigmas_interpol` have the lengths callers of Diffusers see; the step reads only the first 2n.
    """
    return torch.cat([values[:1], values[1:].repeat_interleave(2), values[-1:]])


class KDPM2DiscreteScheduler(VEScheduleMixin):
    """Midpoint (DPM-Solver-2) steps, two model calls per σ step."""

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
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        prediction_type: str = "epsilon",
        timestep_spacing: str = "linspace",
        steps_offset: int = 0,
    ) -> None:
        self._build_sigma_tables()

    def _fresh_state(self) -> dict[str, Any]:
        return {**super()._fresh_state(), "sample": None}  # the step's start sample, between calls

    @property
    def state_in_first_order(self) -> bool:
        return self.sample is None

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        timesteps: Sequence[float] | None = None,
        sigmas: Sequence[float] | None = None,
    ) -> None:
        ts, sig = self._grid(num_inference_steps, timesteps, sigmas)
        if self._respacing == "karras":
            ts = np.round(ts)  # Diffusers rounds the Karras timesteps of this scheduler
        self.num_inference_steps = len(ts)
        sig_t = torch.from_numpy(sig)  # (n + 1,)
        # σ_mid[i] = √(σ_i σ_{i−1}); σ_mid[0] pairs σ_0 with the final σ (0) and is never used.
        mid = sig_t.log().lerp(sig_t.roll(1).log(), 0.5).exp()
        # Diffusers keeps the respaced (Karras/exponential/β) timesteps, and so the interleaved ones, in float64.
        dtype = torch.float64 if self._respacing else torch.float32
        ts_mid = torch.from_numpy(sigma_to_t(mid.numpy(), self._log_sigmas)).to(dtype)
        ts_t = torch.from_numpy(np.asarray(ts, dtype=np.float64)).to(dtype)
        # [t_0, t_mid1, t_1, t_mid2, t_2, …, t_mid(n−1), t_(n−1)]
        interleaved = torch.stack((ts_mid[1:-1], ts_t[1:]), dim=-1).flatten()
        self.sigmas_interpol = _pair_up(mid)
        self._finish_set_timesteps(torch.cat([ts_t[:1], interleaved]), _pair_up(sig_t), device, dtype)

    def _input_sigma(self) -> torch.Tensor:
        table = self.sigmas if self.state_in_first_order else self.sigmas_interpol
        return table[self._step_index]

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
        if self.state_in_first_order:
            sigma, sigma_mid, sigma_next = self.sigmas[i], self.sigmas_interpol[i + 1], self.sigmas[i + 1]
            x0 = denoise_ve(self.config.prediction_type, model_output, sample, sigma)
            prev = euler_update(sample, to_d(sample, x0, sigma), sigma, sigma_mid)
            self.sample = sample
        else:
            sigma, sigma_mid, sigma_next = self.sigmas[i - 1], self.sigmas_interpol[i], self.sigmas[i]
            x0 = denoise_ve(self.config.prediction_type, model_output, sample, sigma_mid)
            prev = euler_update(self.sample, to_d(sample, x0, sigma_mid), sigma, sigma_next)
            self.sample = None
        self._step_index += 1
        return self._output(return_dict, prev, x0)
