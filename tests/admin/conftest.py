from __future__ import annotations

import re

import pytest

from api.app import create_app
from shared.settings import load_settings


@pytest.fixture
def settings(redis_url, tmp_path):
    return load_settings(redis_url=redis_url, storage="local", storage_root=tmp_path / "outputs",
                         models_dir=tmp_path / "models")


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def services(app):
    return app.extensions["kiln"]


def csrf_of(html: str) -> str:
    """The CSRF token a dashboard page carries."""
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


class Browser:
    """A Flask test client that signs in like a person: form, cookie, CSRF token."""

    def __init__(self, app) -> None:
        self.client = app.test_client()
        self.csrf = ""

    def sign_in(self, secret: str):
        self.csrf = csrf_of(self.client.get("/admin/login").get_data(as_text=True))
        response = self.client.post("/admin/login", data={"key": secret, "csrf_token": self.csrf})
        if response.status_code == 302:  # signing in starts a new session with a new token
            self.csrf = csrf_of(self.client.get("/admin/keys").get_data(as_text=True))
        return response

    def get(self, path: str, **kw):
        return self.client.get(path, **kw)

    def post(self, path: str, data: dict | None = None, csrf: bool = True):
        return self.client.post(path, data={**(data or {}), **({"csrf_token": self.csrf} if csrf else {})})


@pytest.fixture
def admin(app, services) -> Browser:
    browser = Browser(app)
    response = browser.sign_in(services.keys.create(role="admin", name="ops").secret)
    assert response.status_code == 302
    return browser
