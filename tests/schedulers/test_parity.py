"""Parity with Diffusers (the test oracle): same config, noise, seed and stand-in model.

Each case runs the full loop with our scheduler and with Diffusers' class of the same name and
compares timesteps and the final sample (relative error < 1e-4).
"""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch

from parity_cases import CASES, GRID_CASES, case_id
from scheduler_harness import SD_CONFIG, relative_error, sample_loop, stand_in_model
from worker import schedulers as kiln

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


class _LearnedVarianceModel:
    """Doubles the channels, as a model with a learned variance does."""

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = stand_in_model(x, t)
        return torch.cat([out, torch.tanh(out)], dim=1)


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_matches_diffusers(case: tuple) -> None:
    name, overrides, steps, kwargs = case
    config = {**({} if name.startswith("FlowMatch") else SD_CONFIG), **overrides}
    ours = getattr(kiln, name).from_config(config)
    theirs = getattr(diffusers, name).from_config(config)
    model = _LearnedVarianceModel() if overrides.get("variance_type", "").startswith("learned") else None
    extra = {"model": model} if model else {}
    x_ours = sample_loop(ours, steps, step_kwargs=kwargs, **extra)
    x_theirs = sample_loop(theirs, steps, step_kwargs=kwargs, **extra)
    np.testing.assert_allclose(ours.timesteps.double().numpy(), theirs.timesteps.double().numpy(), rtol=1e-6)
    assert torch.isfinite(x_ours).all()
    assert relative_error(x_ours, x_theirs) < 1e-4


def _custom_grid_kwargs(name: str, set_kwargs: dict) -> dict:
    """Diffusers' UniPC shifts custom σ with numpy arithmetic: give both sides an array."""
    if "sigmas" in set_kwargs and name.startswith("UniPC"):
        return {**set_kwargs, "sigmas": np.array(set_kwargs["sigmas"])}
    return dict(set_kwargs)


@pytest.mark.parametrize("case", GRID_CASES, ids=[case_id((c[0], c[1], 0, c[2])) for c in GRID_CASES])
def test_custom_grids_match_diffusers(case: tuple) -> None:
    """Dynamic shifting (μ), custom σ and custom timesteps reach the same grid and the same sample."""
    name, overrides, set_kwargs, kwargs = case
    config = {**({} if name.startswith("FlowMatch") else SD_CONFIG), **overrides}
    ours = getattr(kiln, name).from_config(config)
    theirs = getattr(diffusers, name).from_config(config)
    set_kwargs = _custom_grid_kwargs(name, set_kwargs)
    x_ours = sample_loop(ours, None, step_kwargs=kwargs, set_kwargs=set_kwargs)
    x_theirs = sample_loop(theirs, None, step_kwargs=kwargs, set_kwargs=set_kwargs)
    np.testing.assert_allclose(ours.timesteps.double().numpy(), theirs.timesteps.double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.sigmas.double().numpy(), theirs.sigmas.double().numpy(), rtol=1e-6, atol=1e-7)
    assert relative_error(x_ours, x_theirs) < 1e-4
