"""The chaos scenarios in their small form (CI): a worker SIGKILLed mid-batch, Redis SIGKILLed and
restarted from its AOF, storage down during uploads, a burst from ten keys, model churn. One
stack (own Redis, S3 server, API and supervised worker) serves them all. The full sizes:
`python -m tests.chaos.run --full` (docs/reliability.md)."""

from __future__ import annotations

import pytest

from tests.chaos.harness import ChaosStack
from tests.chaos.run import SCENARIOS


@pytest.fixture(scope="module")
def chaos_stack(tmp_path_factory):
    stack = ChaosStack(tmp_path_factory.mktemp("chaos")).start()
    yield stack
    stack.stop()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_small(chaos_stack, name):
    small, _full = SCENARIOS[name]
    result = small(chaos_stack)
    assert result.passed, f"{result.problems}\n{result.figures}\n{chaos_stack.tail()}"
