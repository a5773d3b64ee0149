"""Scheduler configurations a randomized parity fuzz against Diffusers found out of step.

Each test compares our scheduler with Diffusers' class of the same name on one configuration
that the main parity table did not cover.
"""

from __future__ import annotations

import diffusers
import pytest
import torch

from scheduler_harness import SD_CONFIG, relative_error, sample_loop
from worker import schedulers as kiln

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def _pair(name: str, **overrides):
    config = {**SD_CONFIG, **overrides}
    return getattr(kiln, name).from_config(config), getattr(diffusers, name).from_config(config)


@pytest.mark.parametrize("overrides", [{}, {"use_karras_sigmas": True}, {"timestep_spacing": "trailing"}])
@pytest.mark.parametrize("steps", [2, 7])
def test_kdpm2_sigma_tables_have_diffusers_length(overrides: dict, steps: int) -> None:
    ours, theirs = _pair("KDPM2DiscreteScheduler", **overrides)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas)
    torch.testing.assert_close(ours.sigmas_interpol, theirs.sigmas_interpol, equal_nan=True)
    assert relative_error(sample_loop(ours, steps), sample_loop(theirs, steps)) < 1e-5


@pytest.mark.parametrize("respacing", ["use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"])
@pytest.mark.parametrize("extra", [{}, {"final_sigmas_type": "sigma_min"}, {"timestep_spacing": "leading"}])
def test_euler_log_linear_with_respaced_sigmas(respacing: str, extra: dict) -> None:
    # Diffusers respaces the log-linear σ (whose ends are the training range's), n points + final σ.
    ours, theirs = _pair("EulerDiscreteScheduler", interpolation_type="log_linear", **{respacing: True}, **extra)
    ours.set_timesteps(6)
    theirs.set_timesteps(6)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)
    assert relative_error(sample_loop(ours, 6), sample_loop(theirs, 6)) < 1e-5


def test_unipc_noise_prediction_with_zero_final_sigma_loads_like_diffusers() -> None:
    # Diffusers accepts this config (its last ε-form update divides by σ = 0 and gives NaN):
    # we load it and lay out the same grid, and refuse only the step that would reach σ = 0.
    ours, theirs = _pair("UniPCMultistepScheduler", predict_x0=False)
    ours.set_timesteps(4)
    theirs.set_timesteps(4)
    torch.testing.assert_close(ours.timesteps, theirs.timesteps)
    torch.testing.assert_close(ours.sigmas, theirs.sigmas)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in ours.timesteps[:-1]:
        x = ours.step(torch.tanh(x), t, x).prev_sample
    assert torch.isfinite(x).all()
    with pytest.raises(ValueError, match="final_sigmas_type='sigma_min'"):
        ours.step(torch.tanh(x), ours.timesteps[-1], x)


@pytest.mark.parametrize("shift", [1.0, 0.7, 3.0])
@pytest.mark.parametrize("steps", [2, 3])
def test_flow_match_heun_few_steps_to_float_rounding(shift: float, steps: int) -> None:
    ours = kiln.FlowMatchHeunDiscreteScheduler(shift=shift)
    theirs = diffusers.FlowMatchHeunDiscreteScheduler(shift=shift)
    assert relative_error(sample_loop(ours, steps), sample_loop(theirs, steps)) < 1e-6


@pytest.mark.parametrize("respacing", [None, "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"])
def test_kdpm2_timesteps_have_diffusers_dtype_and_values(respacing) -> None:
    ours, theirs = _pair("KDPM2DiscreteScheduler", **({respacing: True} if respacing else {}))
    ours.set_timesteps(5)
    theirs.set_timesteps(5)
    assert ours.timesteps.dtype == theirs.timesteps.dtype
    torch.testing.assert_close(ours.timesteps, theirs.timesteps, rtol=1e-6, atol=1e-6)
