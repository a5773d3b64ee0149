"""FlowMatchHeun's Kiln extensions: custom `sigmas` and μ give the σ grid FlowMatchEuler gives for
the same inputs (each interior σ twice), so a FLUX pipeline — which always passes its own σ grid —
can run Heun; μ counts only for a scheduler built from a dynamically shifting config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.pipelines.flow import flux_default_sigmas, new_flow_scheduler
from worker.schedulers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler


def heun_grid(heun) -> torch.Tensor:
    """The distinct σ of a Heun schedule, in order (interior values appear twice)."""
    return torch.unique_consecutive(heun.sigmas)


@pytest.mark.parametrize("dynamic", [False, True])
def test_custom_sigmas_and_mu_give_eulers_grid(dynamic):
    euler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=dynamic)
    heun = FlowMatchHeunDiscreteScheduler.from_config(euler.config)
    sigmas, mu = flux_default_sigmas(6), 0.8
    euler = new_flow_scheduler(euler, None, "cpu", sigmas, mu)
    heun = new_flow_scheduler(heun, None, "cpu", sigmas, mu)
    assert torch.allclose(heun_grid(heun), euler.sigmas, atol=1e-6)
    assert len(heun.timesteps) == 2 * 6 - 1 and torch.allclose(heun.timesteps[::2], euler.timesteps, atol=1e-3)


def test_without_sigmas_the_grid_is_unchanged():
    heun = FlowMatchHeunDiscreteScheduler(shift=2.0)
    heun.set_timesteps(5)
    again = FlowMatchHeunDiscreteScheduler(shift=2.0)
    again.set_timesteps(sigmas=heun._default_sigmas(5))  # its own unshifted grid, given
    assert torch.allclose(heun.sigmas, again.sigmas, atol=1e-6)


@pytest.mark.parametrize("bad", [[], [0.0, 0.5], [1.5], [[0.5]]])
def test_bad_sigmas_are_refused(bad):
    with pytest.raises(ValueError, match="sigmas"):
        FlowMatchHeunDiscreteScheduler().set_timesteps(sigmas=bad)


def test_a_flux_pipeline_runs_heun():
    from tests.pipelines.tiny_flow import tiny_flux_pipeline

    pipe = tiny_flux_pipeline(guidance_embeds=False)
    pipe.scheduler = FlowMatchHeunDiscreteScheduler.from_config(pipe.scheduler.config)
    calls = []
    pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    with torch.inference_mode():
        image = pipe("a red cat", num_inference_steps=3, height=32, width=32, max_sequence_length=16,
                     generator=torch.Generator().manual_seed(0), output_type="np").images
    assert np.isfinite(image).all() and len(calls) == 2 * 3 - 1
