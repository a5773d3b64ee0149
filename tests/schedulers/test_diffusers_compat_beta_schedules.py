"""The ᾱ-derived β schedules Diffusers offers beyond the common ones (oracle: Diffusers).

`"exp"` (Heun) and `"laplace"` (DDPM): configs that name them load on Kiln and give Diffusers' βs
and samples.
"""

from __future__ import annotations

import inspect

import diffusers
import pytest
import torch

from worker import schedulers as kiln

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")
CASES = [("HeunDiscreteScheduler", "exp"), ("DDPMScheduler", "laplace")]


@pytest.mark.parametrize("name, schedule", CASES)
def test_betas_match_diffusers(name: str, schedule: str) -> None:
    config = {"num_train_timesteps": 1000, "beta_schedule": schedule}
    ours, theirs = getattr(kiln, name)(**config), getattr(diffusers, name)(**config)
    torch.testing.assert_close(ours.betas, theirs.betas, rtol=1e-6, atol=1e-7)
    assert ours.config.beta_schedule == schedule


@pytest.mark.parametrize("name, schedule", CASES)
def test_sampling_loop_matches_diffusers(name: str, schedule: str) -> None:
    config = {"num_train_timesteps": 1000, "beta_schedule": schedule}
    results = []
    for scheduler in (getattr(kiln, name)(**config), getattr(diffusers, name)(**config)):
        scheduler.set_timesteps(10)
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        extra = {"generator": torch.manual_seed(0)} if takes_generator else {}  # DDPM draws noise
        sample = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(sample, t)
            eps = 0.1 * model_input * torch.cos(torch.as_tensor(t, dtype=torch.float32) / 100)
            sample = scheduler.step(eps, t, sample, **extra).prev_sample
        results.append(sample)
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)
