"""A timestep that is not on the grid fails as it does in Diffusers (oracle: Diffusers).

Diffusers' `index_for_timestep` raises `IndexError` there; code written against it catches that, and
Kiln's own callers catch `ValueError`. Kiln's error is both.
"""

from __future__ import annotations

import diffusers
import pytest

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
