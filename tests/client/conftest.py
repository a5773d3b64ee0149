from __future__ import annotations

import pytest

from tests.api.liveserver import live_api, live_api_env  # noqa: F401  (fixtures)


@pytest.fixture
def stack_env(stack_env):
    """The e2e stack in local single-user mode; the API process dispatches jobs itself."""
    return {**stack_env, "KILN_AUTH": "disabled"}
