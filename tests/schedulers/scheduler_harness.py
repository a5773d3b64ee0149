"""Shared helpers for scheduler tests: a deterministic stand-in model and a sampling loop."""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

SHAPE = (2, 4, 8, 8)

# An SD-like training schedule, used as the base config of most tests.
SD_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


def stand_in_model(x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """A fixed, smooth, bounded function of (x, t) standing in for a denoising network."""
    t = torch.as_tensor(t, dtype=torch.float64).to(x.dtype)
    phase = torch.cos(t / 300.0)
    return 0.8 * torch.tanh(x) * (0.6 + 0.3 * phase) + 0.1 * torch.sin(3 * x + t / 100.0)


def sample_loop(
    scheduler: Any,
    num_steps: int | None = 10,
    seed: int = 0,
    step_kwargs: dict | None = None,
    set_kwargs: dict | None = None,
    model: Callable[[torch.Tensor, Any], torch.Tensor] = stand_in_model,
    interleave: Callable[[], None] | None = None,
    device: str = "cpu",
    generator_device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Run a full denoising loop from seeded noise and return the final sample.

    The start noise is always drawn on the CPU; step noise comes from a generator on
    `generator_device` (a CPU generator gives the same numbers whatever `device` is).
    """
    set_kwargs = dict(set_kwargs or {})
    if num_steps is not None:
        set_kwargs["num_inference_steps"] = num_steps
    scheduler.set_timesteps(**set_kwargs, device=device)
    init_sigma = getattr(scheduler, "init_noise_sigma", 1.0)  # the oracle's flow-match has none
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed)) * init_sigma
    x = x.to(device=device, dtype=dtype)
    step_kwargs = dict(step_kwargs or {})
    if "generator" in inspect.signature(scheduler.step).parameters:  # some oracles take none
        step_kwargs["generator"] = torch.Generator(device=generator_device).manual_seed(seed + 1)
    for t in scheduler.timesteps:
        scale = getattr(scheduler, "scale_model_input", lambda x, t: x)
        out = model(scale(x, t), t)
        x = scheduler.step(out, t, x, **step_kwargs).prev_sample
        if interleave is not None:
            interleave()
    return x


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours.double() - theirs.double()).norm() / theirs.double().norm().clamp(min=1e-12))
