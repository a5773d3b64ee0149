"""The stack with keys required, and a headless Chromium from Debian's package driven by Playwright.

The browser is the system's (`/usr/bin/chromium`, installed by `make system-deps`); Playwright
never downloads one. Screenshots go to `artifacts/screenshots/`.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from shared.settings import REPO_ROOT
from tests.fixtures.stack import Stack

CHROMIUM = os.environ.get("KILN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = REPO_ROOT / "artifacts" / "screenshots"


class AuthStack(Stack):
    """The stack with `KILN_AUTH=enabled`: API calls carry a key (the bootstrap admin's by default)."""

    def __init__(self, env: dict[str, str], logs: Path, admin_key: str) -> None:
        super().__init__(env, logs)
        self.admin_key = admin_key
        self.headers = {"Authorization": f"Bearer {admin_key}"}

    def submit(self, key: str | None = None, **body) -> dict:
        headers = {"Authorization": f"Bearer {key}"} if key else self.headers
        response = requests.post(f"{self.url}/v1/jobs", json=body, headers=headers, timeout=10)
        assert response.status_code == 202, response.text
        return response.json()

    def job(self, job_id: str) -> dict:
        return requests.get(f"{self.url}/v1/jobs/{job_id}", headers=self.headers, timeout=10).json()

    def create_key(self, **body) -> dict:
        response = requests.post(f"{self.url}/v1/keys", json=body, headers=self.headers, timeout=10)
        assert response.status_code == 201, response.text
        return response.json()


@pytest.fixture
def auth_stack(stack_env: dict[str, str], tmp_path: Path) -> Iterator[AuthStack]:
    """API (keys required, a bootstrap admin key) + one worker running one job at a time."""
    admin_key = "kiln_bootstrap_" + secrets.token_urlsafe(24)
    env = {**stack_env, "KILN_AUTH": "enabled", "KILN_BOOTSTRAP_ADMIN_KEY": admin_key, "KILN_WORKER_SLOTS": "1"}
    env.pop("KILN_SECRET_KEY", None)  # the dashboard makes one and keeps it in Redis
    running = AuthStack(env, tmp_path, admin_key)
    try:
        running.start_api()
        running.start_worker()
        yield running
    finally:
        running.stop()


@pytest.fixture
def browser_page():
    """A fresh page in headless system Chromium (1280×860, UTC)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `make system-deps` installs Debian's chromium")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        # bypass_csp: Playwright's own wait_for_function predicates are evaluated as strings, which
        # the dashboard's CSP (script-src 'self', no eval) rightly blocks; the page's scripts are
        # unaffected (tests/admin/test_hardening.py checks the header itself).
        context = browser.new_context(viewport={"width": 1280, "height": 860}, timezone_id="UTC", bypass_csp=True)
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.on("dialog", lambda dialog: dialog.accept())  # confirm() of cancel and revoke buttons
        try:
            yield page
        finally:
            context.close()
            browser.close()


def shoot(page, name: str, full_page: bool = True) -> Path:
    """A screenshot (of the whole page, or of the window) into artifacts/screenshots/<name>.png."""
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path
