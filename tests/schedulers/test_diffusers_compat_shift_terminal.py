"""`shift_terminal` on a grid whose last σ is already 1 leaves the grid as it is (no NaN σ).

Diffusers 0.42 divides by zero there (its later releases skip the stretch, as Kiln does); the
oracle is Diffusers' grid without `shift_terminal`, which the stretch must not change.
"""

from __future__ import annotations

import diffusers
import pytest
import torch

from worker import schedulers as kiln

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::RuntimeWarning")


def _sigmas(module, name: str, config: dict, **grid) -> torch.Tensor:
    scheduler = getattr(module, name)(**config)
    scheduler.set_timesteps(**grid)
    return scheduler.sigmas


@pytest.mark.parametrize("name, config", [
    ("FlowMatchEulerDiscreteScheduler", {}),
    ("UniPCMultistepScheduler", {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}),
])
def test_one_step_grid_is_not_stretched(name: str, config: dict) -> None:
    ours = _sigmas(kiln, name, {**config, "shift_terminal": 0.1}, num_inference_steps=1)
    plain = _sigmas(diffusers, name, config, num_inference_steps=1)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, plain)


def test_custom_grid_ending_at_one_is_not_stretched() -> None:
    name = "FlowMatchEulerDiscreteScheduler"
    ours = _sigmas(kiln, name, {"shift_terminal": 0.1}, sigmas=[0.9, 1.0])
    plain = _sigmas(diffusers, name, {}, sigmas=[0.9, 1.0])
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, plain)


def test_longer_grids_still_end_at_the_terminal() -> None:
    ours = _sigmas(kiln, "FlowMatchEulerDiscreteScheduler", {"shift_terminal": 0.1}, num_inference_steps=8)
    theirs = _sigmas(diffusers, "FlowMatchEulerDiscreteScheduler", {"shift_terminal": 0.1}, num_inference_steps=8)
    torch.testing.assert_close(ours, theirs)
    assert abs(float(ours[-2]) - 0.1) < 1e-6
