"""docker-compose.yml: valid against the Compose specification, and the stack the design asks for."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.settings import REPO_ROOT, Settings
from tests.infra.test_k8s import ENV_BESIDE_SETTINGS

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"


def check_jsonschema() -> list[str]:
    beside_python = str(Path(sys.executable).parent)  # the venv's bin, even when it is not on PATH
    found = shutil.which("check-jsonschema", path=beside_python) or shutil.which("check-jsonschema")
    if found is None:
        pytest.skip("check-jsonschema is not installed (it is in the test extra: pip install -e '.[test]')")
    return [found]


def validate(path) -> subprocess.CompletedProcess:
    return subprocess.run([*check_jsonschema(), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_compose_file_matches_the_compose_spec():
    result = validate(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_rejects_a_broken_compose_file(tmp_path, compose):
    broken = dict(compose)
    broken["services"] = {**compose["services"], "api": {**compose["services"]["api"], "restart_policy": "always"}}
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = validate(path)
    assert result.returncode != 0 and "restart_policy" in result.stdout + result.stderr


def _flags(command: list[str]) -> dict[str, str]:
    return {command[i].lstrip("-"): command[i + 1] for i in range(len(command) - 1) if command[i].startswith("--")}


def test_redis_persists_with_aof_and_never_evicts(compose):
    flags = _flags(compose["services"]["redis"]["command"])
    assert (flags["appendonly"], flags["appendfsync"], flags["maxmemory-policy"]) == ("yes", "everysec", "noeviction")
    assert any(volume.endswith(":/data") for volume in compose["services"]["redis"]["volumes"])


def test_minio_bucket_is_created_before_kiln_starts(compose):
    services = compose["services"]
    init = services["minio-init"]
    assert init["image"].startswith("minio/mc:") and "mc mb --ignore-existing" in " ".join(init["command"])
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ("api", "worker", "worker-cpu"):
        assert services[name]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
        env = services[name]["environment"]
        assert env["KILN_STORAGE"] == "s3" and env["KILN_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_workers_scale_gpu_reserved_cpu_profiled(compose):
    services = compose["services"]
    for name in ("worker", "worker-cpu"):
        # `--scale` needs replicas without a fixed name or host port.
        assert "container_name" not in services[name] and "ports" not in services[name]
    (device,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == 1
    assert services["worker"]["environment"]["KILN_DEVICE"] == "cuda"
    assert services["worker-cpu"]["profiles"] == ["cpu"]
    assert services["worker-cpu"]["environment"]["KILN_DEVICE"] == "cpu"
    assert "deploy" not in services["worker-cpu"]


def test_worker_stop_grace_outlasts_a_job(compose):
    grace = compose["services"]["worker"]["stop_grace_period"]
    assert grace.endswith("m") and int(grace[:-1]) * 60 >= 600 + 30
    assert compose["x-kiln-env"]["KILN_JOB_TIMEOUT_S"] == "${KILN_JOB_TIMEOUT_S:-600}"


def test_images_are_pinned(compose):
    for name, service in compose["services"].items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name} uses an unpinned image {image}"


def test_environment_names_are_real_settings(compose):
    known = {f"KILN_{name.upper()}" for name in Settings.model_fields} | ENV_BESIDE_SETTINGS
    for name in ("api", "worker", "worker-cpu"):
        used = {key for key in compose["services"][name]["environment"] if key.startswith("KILN_")}
        assert used - known == set(), name

