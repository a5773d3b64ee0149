"""Storage backends under test: every contract test runs once per backend.

The S3 fixtures (`s3_server`, `s3_bucket`) come from the `tests.fixtures.s3server` plugin,
registered in the top-level conftest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shared.storage import LocalStorage, S3Storage, Storage
from tests.fixtures.s3server import S3Server, free_port

# Small pages, so that listings of a few dozen keys cross several ListObjectsV2 pages and
# prefix deletes several DeleteObjects batches.
PAGE_SIZE = 7


@pytest.fixture
def make_s3(s3_server: S3Server) -> Callable[..., S3Storage]:
    """Build an `S3Storage` on the test server; keyword options override the defaults."""

    def make(bucket: str, **options: object) -> S3Storage:
        settings: dict[str, object] = {
            "endpoint_url": s3_server.endpoint_url,
            "region": s3_server.region,
            "access_key": s3_server.access_key,
            "secret_key": s3_server.secret_key,
            "max_attempts": 2,
            **options,
        }
        return S3Storage(bucket, **settings)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def dead_endpoint() -> str:
    """The URL of a local port that nobody listens on (one per session: each endpoint costs a client)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def local_storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "objects")


@pytest.fixture
def s3_storage(make_s3: Callable[..., S3Storage], s3_bucket: str) -> S3Storage:
    return make_s3(s3_bucket, page_size=PAGE_SIZE)


@pytest.fixture(params=["local", "s3"])
def storage(request: pytest.FixtureRequest) -> Storage:
    """Each backend in turn; the S3 server starts only when an S3 case runs."""
    return request.getfixturevalue(f"{request.param}_storage")
