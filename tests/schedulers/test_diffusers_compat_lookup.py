"""Timestep lookups as in Diffusers (oracle: Diffusers).

Off the grid, Diffusers' `index_for_timestep` raises `IndexError`; code written against it catches
that, and Kiln's own callers catch `ValueError`: Kiln's error is both. An integer timestep whose float
grid entry carries float32 rounding (FlowMatch's t = 1000 σ) finds that entry (Diffusers 0.42 raises;
its later releases match within the rounding too).
"""

from __future__ import annotations

import diffusers
import pytest
import torch

from worker import schedulers as kiln
from worker.schedulers.base import TimestepNotInScheduleError

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
NAMES = ["FlowMatchEulerDiscreteScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler"]


def _on_grid(name: str):
    """The same scheduler in both libraries, with a 10-step grid."""
    pair = getattr(kiln, name)(), getattr(diffusers, name)()
    for scheduler in pair:
        scheduler.set_timesteps(10)
    return pair


@pytest.mark.parametrize("name", NAMES)
def test_off_grid_timestep_raises_index_error_like_diffusers(name: str) -> None:
    ours, theirs = _on_grid(name)
    between = (theirs.timesteps[0] + theirs.timesteps[1]) / 2
    with pytest.raises(IndexError):
        theirs.index_for_timestep(between)
    with pytest.raises(IndexError, match="not in this scheduler's timesteps"):
        ours.index_for_timestep(between)
    with pytest.raises(ValueError):
        ours.index_for_timestep(between)


@pytest.mark.parametrize("name", NAMES)
def test_on_grid_timesteps_resolve_to_the_same_index(name: str) -> None:
    ours, theirs = _on_grid(name)
    for t in theirs.timesteps:
        assert ours.index_for_timestep(t) == theirs.index_for_timestep(t)


def test_error_is_one_class_of_both_kinds() -> None:
    assert issubclass(TimestepNotInScheduleError, ValueError) and issubclass(TimestepNotInScheduleError, IndexError)


def test_integer_timesteps_find_their_float_rounded_entries() -> None:
    """FlowMatch's grid is t = 1000 σ in float32 (e.g. 254.00002); training code passes integers."""
    ours, theirs = kiln.FlowMatchEulerDiscreteScheduler(), diffusers.FlowMatchEulerDiscreteScheduler()
    grid = theirs.timesteps
    rounded = grid.round()
    off = (grid != rounded).nonzero().flatten()
    assert len(off) > 0  # the case exists on Diffusers' own grid
    for index in off[:20].tolist():
        assert ours.index_for_timestep(rounded[index]) == theirs.index_for_timestep(grid[index]) == index


def test_scale_noise_takes_integer_timesteps_as_diffusers_takes_its_float_ones() -> None:
    ours, theirs = kiln.FlowMatchEulerDiscreteScheduler(), diffusers.FlowMatchEulerDiscreteScheduler()
    index = int((theirs.timesteps != theirs.timesteps.round()).nonzero()[0])
    exact = theirs.timesteps[[index, 500]]
    sample, noise = torch.randn(2, 4, 8, 8, generator=torch.manual_seed(0)), torch.randn(2, 4, 8, 8)
    expected = theirs.scale_noise(sample, exact, noise)
    torch.testing.assert_close(ours.scale_noise(sample, exact.round().long(), noise), expected)
