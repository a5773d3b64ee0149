"""Latent Consistency Model multistep sampling (Luo et al. 2023, Algorithm 1).

The consistency function f(x, t) = c_skip(t) x + c_out(t) x̂_0 (Song et al. 2023, eq. 3, with
σ_data = 0.5 and t scaled by `timestep_scaling`) maps x_t to a clean sample; between steps it is
re-noised to the next timestep with fresh noise.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from worker.runtime.configuration import register_to_config

from .ddpm import DDPMScheduler
from .base import Generator, randn_tensor
from .prediction import denoise_vp, limit_x0
from .vp import VPScheduleMixin

SIGMA_DATA = 0.5


def boundary_scalings(timestep: int, timestep_scaling: float) -> tuple[float, float]:
    """(c_skip, c_out) at a discrete timestep: c_skip(0) ≈ 1 keeps f(x, 0) = x."""
    t = timestep * timestep_scaling
    return SIGMA_DATA**2 / (t**2 + SIGMA_DATA**2), t / (t**2 + SIGMA_DATA**2) ** 0.5


class LCMScheduler(VPScheduleMixin):
    """Few-step sampling on the `original_inference_steps` skipping grid of the distilled model."""

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        trained_betas: Sequence[float] | None = None,
        original_inference_steps: int = 50,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        prediction_type: str = "epsilon",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        timestep_spacing: str = "leading",
        timestep_scaling: float = 10.0,
        rescale_betas_zero_snr: bool = False,
    ) -> None:
        self._build_tables()
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.num_inference_steps: int | None = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self._reset()

    def _origin_grid(self, original_steps: int, strength: float) -> np.ndarray:
        """The distillation grid k−1, 2k−1, … (k = T // original steps), ascending."""
        T = self.config.num_train_timesteps
        if original_steps > T:
            raise ValueError(f"original_inference_steps={original_steps} exceeds num_train_timesteps={T}")
        return np.arange(1, int(original_steps * strength) + 1) * (T // original_steps) - 1

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: torch.device | str | None = None,
        timesteps: Sequence[int] | None = None,
        sigmas: Any = None,
        original_inference_steps: int | None = None,
        strength: float = 1.0,
    ) -> None:
        """Pick `num_inference_steps` evenly (by index) from the descending distillation grid."""
        if sigmas is not None:
            raise ValueError("LCMScheduler takes timesteps, not sigmas")
        self._check_timestep_args(num_inference_steps, timesteps)
        original = original_inference_steps or self.config.original_inference_steps
        origin = self._origin_grid(original, strength)
        if timesteps is not None:
            grid = np.array(list(timesteps), dtype=np.int64)
            if np.any(grid[1:] >= grid[:-1]) or grid[0] >= self.config.num_train_timesteps:
                raise ValueError("custom timesteps must be strictly descending and below num_train_timesteps")
            self.num_inference_steps = len(grid)
        else:
            n = int(num_inference_steps)
            if n < 1 or n > min(original, len(origin)):
                raise ValueError(f"num_inference_steps must be in 1..{min(original, len(origin))}, got {n}")
            picks = np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)
            grid = origin[::-1][picks]
            self.num_inference_steps = n
        self.timesteps = torch.from_numpy(grid).to(device=device, dtype=torch.long)
        self._reset()

    previous_timestep = DDPMScheduler.previous_timestep  # the schedule's next timestep (−1 after the last)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: Generator = None,
        return_dict: bool = True,
    ) -> Any:
        """x_{t'} = √ᾱ_{t'} f(x_t, t) + √(1−ᾱ_{t'}) z; the last step returns f(x_t, t) itself.

        `pred_original_sample` of the output is the consistency estimate f(x_t, t).
        """
        self._require_timesteps()
        self._init_step_index(timestep)
        t, i = int(timestep), self._step_index
        prev_t = int(self.timesteps[i + 1]) if i + 1 < len(self.timesteps) else t
        ab_t = self.alphas_cumprod[t]
        ab_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        x0 = denoise_vp(self.config.prediction_type, model_output, sample, ab_t.sqrt(), (1 - ab_t).sqrt()).x0
        x0 = limit_x0(x0, self._option)
        c_skip, c_out = boundary_scalings(t, self.config.timestep_scaling)
        denoised = c_out * x0 + c_skip * sample
        prev = denoised
        if i != self.num_inference_steps - 1:
            noise = randn_tensor(model_output.shape, generator, model_output.device, denoised.dtype)
            prev = ab_prev.sqrt() * denoised + (1 - ab_prev).sqrt() * noise
        self._step_index += 1
        return self._output(return_dict, prev, denoised)
