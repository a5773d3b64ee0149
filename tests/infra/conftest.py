"""Fixtures for the deployment files: rendered Kubernetes overlays, the compose file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from shared.settings import REPO_ROOT
from tests.infra.kustomize import render

K8S = REPO_ROOT / "infra" / "k8s"
OVERLAYS = ("gpu", "cpu")


def kustomize_dirs() -> list[Path]:
    return [K8S / "base", *(K8S / "overlays" / name for name in OVERLAYS)]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    """(overlay name, its rendered objects)."""
    return request.param, render(K8S / "overlays" / request.param)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
