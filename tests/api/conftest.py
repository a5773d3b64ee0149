from __future__ import annotations

import pytest
import redis

from api.app import create_app
from shared.settings import load_settings


@pytest.fixture
def settings(redis_url, tmp_path):
    """Local single-user mode: these tests are about validation, not keys (see test_auth.py)."""
    return load_settings(redis_url=redis_url, storage="local", storage_root=tmp_path / "outputs",
                         models_dir=tmp_path / "models", auth="disabled")


@pytest.fixture
def app(settings):
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def redis_keys(redis_url):
    """A function returning every key in Redis, to prove a rejected request stored nothing."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    return lambda: sorted(client.keys("*"))


@pytest.fixture
def auth_settings(redis_url, tmp_path):
    """Keys required (the default)."""
    return load_settings(redis_url=redis_url, storage="local", storage_root=tmp_path / "outputs",
                         models_dir=tmp_path / "models")


@pytest.fixture
def auth_app(auth_settings):
    return create_app(auth_settings)


class Keys:
    """Keys made straight in the store, and the headers that present them."""

    def __init__(self, app) -> None:
        self.store = app.extensions["kiln"].keys

    def make(self, role: str = "user", owner: str | None = None) -> tuple[str, dict[str, str]]:
        created = self.store.create(role=role, owner=owner)
        return created.key["id"], {"Authorization": f"Bearer {created.secret}"}


@pytest.fixture
def keys(auth_app) -> Keys:
    return Keys(auth_app)


from tests.api.liveserver import live_api, live_api_env  # noqa: E402,F401  (fixtures)
