"""The API on a real gunicorn process (as `make up` runs it), against the test Redis; no worker.
Import `live_api` into a conftest to use it."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.localstack import api_command, free_port, http_ok, stop_all, wait_until
from shared.settings import REPO_ROOT

ADMIN_SECRET = "kiln_test_bootstrap_admin_0123456789abcdef"


@dataclass
class LiveAPI:
    url: str
    admin_key: str
    log: Path

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}


@pytest.fixture
def live_api_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """The server's environment; tests may change it before starting `live_api`."""
    return {**os.environ, "KILN_REDIS_URL": redis_url, "KILN_STORAGE": "local",
            "KILN_STORAGE_ROOT": str(tmp_path / "outputs"), "KILN_MODELS_DIR": str(tmp_path / "models"),
            "KILN_BOOTSTRAP_ADMIN_KEY": ADMIN_SECRET, "KILN_DISPATCH_IN_API": "false",
            "KILN_AUTH": "enabled", "KILN_LOG_LEVEL": "WARNING"}


@pytest.fixture
def live_api(live_api_env: dict[str, str], tmp_path: Path) -> Iterator[LiveAPI]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "api.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(api_command(f"127.0.0.1:{port}", workers=1, threads=6),
                                env={**live_api_env, "KILN_PUBLIC_URL": url}, cwd=REPO_ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: http_ok(f"{url}/livez"), 60, "the API")
        yield LiveAPI(url, ADMIN_SECRET, log)
    finally:
        proc.send_signal(signal.SIGQUIT)  # quick shutdown: open keep-alive connections need no grace
        stop_all([proc], timeout=3)  # open event streams may hold a thread; then it is killed
