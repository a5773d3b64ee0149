"""The Dockerfiles and their pinned requirement lists."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement

from shared.settings import REPO_ROOT

DOCKER = REPO_ROOT / "infra" / "docker"
# The model runtime: never in the API image.
RUNTIME_ONLY = {"torch", "numpy", "safetensors", "huggingface-hub", "transformers", "tokenizers", "triton"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(name: str) -> dict[str, str]:
    lines = [line for line in (DOCKER / name).read_text().splitlines() if line and not line.startswith("#")]
    found = {}
    for line in lines:
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{name}: {line} is not pinned"
        found[canonical(req.name)] = spec.version
    return found


def pyproject_dependencies() -> list[Requirement]:
    """The core dependencies and, once the runtime is split out of them, the `worker` extra."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    runtime = project.get("optional-dependencies", {}).get("worker", [])
    return [Requirement(dep) for dep in project["dependencies"] + runtime]


def dockerfile(name: str) -> str:
    return (DOCKER / name).read_text()


def test_api_image_has_no_model_runtime():
    assert not RUNTIME_ONLY & set(pins("requirements-api.txt"))


def test_requirement_lists_cover_the_project():
    api, worker = pins("requirements-api.txt"), pins("requirements-worker.txt")
    for dep in pyproject_dependencies():
        name = canonical(dep.name)
        if name == "torch":
            continue  # from the CUDA index, pinned in worker.Dockerfile
        assert name in worker, f"requirements-worker.txt lacks {name}: run infra/docker/pin_requirements.py"
        assert dep.specifier.contains(worker[name]), f"{name}=={worker[name]} violates pyproject's {dep}"
        if name not in RUNTIME_ONLY:
            assert name in api, f"requirements-api.txt lacks {name}: run infra/docker/pin_requirements.py"
    assert "prometheus-client" in api and "prometheus-client" in worker
    assert {k: v for k, v in api.items() if k in worker} == {k: worker[k] for k in api}, "the two lists disagree"


def test_worker_torch_pin_matches_the_project():
    (torch,) = [dep for dep in pyproject_dependencies() if canonical(dep.name) == "torch"]
    (version,) = re.findall(r"^ARG TORCH_VERSION=(\S+)$", dockerfile("worker.Dockerfile"), flags=re.MULTILINE)
    assert torch.specifier.contains(version)
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+$", dockerfile("worker.Dockerfile"),
                     flags=re.MULTILINE)


@pytest.mark.parametrize("name", ["api.Dockerfile", "worker.Dockerfile"])
def test_images_are_multi_stage_pinned_non_root_with_health_checks(name):
    text = dockerfile(name)
    bases = re.findall(r"^ARG (?:PYTHON|CUDA)_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    assert bases and all(re.search(r":\d[\w.-]*$", base) for base in bases), bases
    assert len(re.findall(r"^FROM ", text, flags=re.MULTILINE)) >= 2
    users = re.findall(r"^USER (\S+)$", text, flags=re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*CMD", text.replace("\\\n", " "), flags=re.MULTILINE)
    assert "/healthz" in text


def test_api_image_copies_no_worker_code():
    copies = re.findall(r"^COPY .*$", dockerfile("api.Dockerfile"), flags=re.MULTILINE)
    assert not any(" worker" in line for line in copies)


def test_dockerignore_keeps_the_context_small():
    ignored = set((REPO_ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests", "var"} <= ignored
