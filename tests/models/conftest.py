import pytest
import torch


@pytest.fixture(autouse=True)
def _seeded():
    """Every model test starts from the same RNG state (random init consumes it)."""
    torch.manual_seed(0)
    yield
