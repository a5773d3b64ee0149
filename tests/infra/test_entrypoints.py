"""The containers run the very entry points the tests start (`shared.localstack`): the API under
gunicorn on `api.wsgi:app`, the worker as `python -m worker`, with the same options."""

from __future__ import annotations

import json
import re

import pytest

from shared.localstack import api_command, worker_command
from shared.settings import REPO_ROOT
from tests.infra.kustomize import find

DOCKERFILES = REPO_ROOT / "infra" / "docker"


def as_tested_api(command: list[str]) -> list[str]:
    """`command` rebuilt by `api_command` from its own bind/workers/threads, interpreter dropped."""
    flags = {command[i]: command[i + 1] for i in range(len(command) - 1) if command[i].startswith("--")}
    expected = api_command(flags["--bind"], int(flags["--workers"]), int(flags["--threads"]))
    return expected[1:]


def check_api(command: list[str]) -> None:
    assert command[0] in ("python", "python3"), command
    assert command[1:] == as_tested_api(command), command
    assert command[-1] == "api.wsgi:app" and command[1:3] == ["-m", "gunicorn"]
    assert command[command.index("--bind") + 1].startswith("0.0.0.0:")  # reachable from outside the container


def check_worker(command: list[str]) -> None:
    assert command[0] in ("python", "python3"), command
    assert command[1:] == worker_command()[1:] == ["-m", "worker"]


def dockerfile_cmd(name: str) -> list[str]:
    text = (DOCKERFILES / name).read_text().replace("\\\n", " ")
    (cmd,) = re.findall(r"^CMD (\[.*\])\s*$", text, flags=re.MULTILINE)
    return json.loads(cmd)


def test_compose_runs_the_tested_entry_points(compose):
    check_api(compose["services"]["api"]["command"])
    for name in ("worker", "worker-cpu"):
        check_worker(compose["services"][name]["command"])


def test_kubernetes_runs_the_tested_entry_points(overlay):
    _, objects = overlay
    api = find(objects, "Deployment", "kiln-api")["spec"]["template"]["spec"]["containers"][0]
    worker = find(objects, "Deployment", "kiln-worker")["spec"]["template"]["spec"]["containers"][0]
    check_api(api["command"])
    check_worker(worker["command"])
    assert "args" not in api and "args" not in worker


@pytest.mark.parametrize("name, check", [("api.Dockerfile", check_api), ("worker.Dockerfile", check_worker)])
def test_images_default_to_the_tested_entry_points(name, check):
    check(dockerfile_cmd(name))


def test_a_changed_command_is_caught():
    with pytest.raises(AssertionError):
        check_api(["python", "-m", "gunicorn", "--bind", "0.0.0.0:8000", "--workers", "2", "--threads", "8",
                   "api.wsgi:app"])
    with pytest.raises(AssertionError):
        check_worker(["celery", "-A", "worker.app", "worker"])
