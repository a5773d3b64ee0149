"""What only the S3 backend does, against a real S3-compatible server process (moto)."""

from __future__ import annotations

import os
import time
import urllib.request
from collections.abc import Callable

import pytest
from botocore.model import OperationModel
from botocore.stub import Stubber

from shared.storage import InvalidArgument, S3Storage, StorageError, StorageUnavailable
from tests.fixtures.s3server import S3Server
from tests.storage.conftest import PAGE_SIZE

MakeS3 = Callable[..., S3Storage]


def test_presigned_url_serves_the_bytes_to_a_plain_http_client(s3_storage: S3Storage) -> None:
    s3_storage.put("outputs/j/0.png", b"\x89PNG image bytes", "image/png")

    url = s3_storage.url("outputs/j/0.png", expires_in=300)

    assert url.startswith(f"{s3_storage.endpoint_url}/{s3_storage.bucket}/outputs/j/0.png?")
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url and "X-Amz-Expires=300" in url
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.read() == b"\x89PNG image bytes"
        assert answer.headers["Content-Type"] == "image/png"


def test_presigned_urls_can_name_a_public_endpoint(make_s3: MakeS3, s3_server: S3Server, s3_bucket: str) -> None:
    public = s3_server.endpoint_url.replace("127.0.0.1", "localhost")
    storage = make_s3(s3_bucket, presign_endpoint_url=public)
    storage.put("k.txt", b"hello", "text/plain")

    url = storage.url("k.txt", 60)

    assert url.startswith(f"{public}/{s3_bucket}/k.txt?")
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.read() == b"hello"


def test_content_type_is_set_on_the_server_object(s3_storage: S3Storage, s3_server: S3Server) -> None:
    s3_storage.put("a.bin", b"{}", "application/json")

    answer = s3_server.client.head_object(Bucket=s3_storage.bucket, Key="a.bin")

    assert answer["ContentType"] == "application/json"
    assert answer["ContentLength"] == 2


def test_listing_and_prefix_deletes_go_page_by_page(s3_storage: S3Storage) -> None:
    keys = [f"paged/{index:02d}" for index in range(3 * PAGE_SIZE + 1)]
    for key in keys:
        s3_storage.put(key, b"", "application/octet-stream")
    requests: list[tuple[str, int]] = []

    def record(params: dict[str, object], model: OperationModel, **_: object) -> None:
        batch = params.get("MaxKeys") or len(params.get("Delete", {}).get("Objects", []))  # type: ignore[union-attr]
        requests.append((model.name, int(batch)))  # type: ignore[arg-type]

    events = s3_storage._client.meta.events
    events.register("provide-client-params.s3.*", record)
    try:
        assert s3_storage.list("paged/") == keys
        assert s3_storage.delete_prefix("paged/") == len(keys)
    finally:
        events.unregister("provide-client-params.s3.*", record)

    pages = [("ListObjectsV2", PAGE_SIZE)] * 4
    batches = [("DeleteObjects", PAGE_SIZE)] * 3 + [("DeleteObjects", 1)]
    assert requests == pages + pages + batches  # list() once, then delete_prefix's own listing
    assert s3_storage.list() == []


@pytest.mark.parametrize(
    ("code", "status", "error", "message"),
    [
        ("InternalError", 500, StorageUnavailable, "is failing: InternalError"),
        ("SlowDown", 503, StorageUnavailable, "is failing: SlowDown"),
        ("AccessDenied", 403, StorageUnavailable, "denied access to bucket"),
        ("InvalidAccessKeyId", 403, StorageUnavailable, "check the credentials"),
        ("InvalidStorageClass", 400, StorageError, "rejected a request on bucket .*: InvalidStorageClass"),
    ],
)
def test_server_errors_map_to_storage_errors(
    make_s3: MakeS3, s3_bucket: str, code: str, status: int, error: type[StorageError], message: str
) -> None:
    storage = make_s3(s3_bucket, read_timeout=59.5)  # its own client, so stubbing it affects no other test
    with Stubber(storage._client) as stub:
        stub.add_client_error("put_object", service_error_code=code, http_status_code=status)

        with pytest.raises(error, match=message) as caught:
            storage.put("k", b"x", "text/plain")
    assert type(caught.value) is error


def test_create_bucket_is_idempotent(make_s3: MakeS3, s3_server: S3Server) -> None:
    first = make_s3("created-by-storage", create_bucket=True)
    second = make_s3("created-by-storage", create_bucket=True)
    first.put("k", b"x", "text/plain")

    second.health()
    assert second.get("k") == b"x"
    assert "created-by-storage" in [b["Name"] for b in s3_server.client.list_buckets()["Buckets"]]


def test_a_missing_bucket_makes_the_storage_unavailable(make_s3: MakeS3) -> None:
    storage = make_s3("no-such-bucket")

    with pytest.raises(StorageUnavailable, match="bucket 'no-such-bucket' does not exist"):
        storage.health()
    with pytest.raises(StorageUnavailable, match="no-such-bucket"):
        storage.put("k", b"x", "text/plain")


def test_health_fails_fast_and_clearly_when_the_server_is_down(make_s3: MakeS3, dead_endpoint: str) -> None:
    storage = make_s3("kiln", endpoint_url=dead_endpoint, max_attempts=1, connect_timeout=2)

    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match=f"S3 endpoint {dead_endpoint} is unreachable") as caught:
        storage.health()
    assert time.monotonic() - started < 5
    assert (caught.value.code, caught.value.http_status) == ("storage_unavailable", 503)


@pytest.mark.parametrize("operation", ["put", "get", "list", "delete"])
def test_every_operation_reports_an_unreachable_server(
    make_s3: MakeS3, dead_endpoint: str, operation: str
) -> None:
    storage = make_s3("kiln", endpoint_url=dead_endpoint, max_attempts=1)
    arguments = {"put": ("k", b"x", "text/plain"), "get": ("k",), "list": ("",), "delete": ("k",)}[operation]

    with pytest.raises(StorageUnavailable, match="unreachable"):
        getattr(storage, operation)(*arguments)


def test_missing_credentials_make_the_storage_unavailable(
    make_s3: MakeS3, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage = make_s3(s3_bucket, access_key=None, secret_key=None)

    with pytest.raises(StorageUnavailable, match="no usable S3 credentials"):
        storage.url("k", 60)


def test_a_forked_child_builds_its_own_client(s3_storage: S3Storage) -> None:
    s3_storage.put("parent", b"p", "text/plain")
    parent_client = s3_storage._client

    pid = os.fork()
    if pid == 0:  # child: sharing the parent's connection pool would interleave their sockets
        exit_code = 1
        try:
            if s3_storage._client is not parent_client:
                s3_storage.put("child", s3_storage.get("parent") + b"c", "text/plain")
                exit_code = 0
        finally:
            os._exit(exit_code)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert s3_storage._client is parent_client
    assert s3_storage.get("child") == b"pc"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"bucket": "Upper_Case"}, "bucket"),
        ({"bucket": "ab"}, "bucket"),
        ({"bucket": "kiln", "endpoint_url": "127.0.0.1:9000"}, "endpoint_url"),
        ({"bucket": "kiln", "presign_endpoint_url": "ftp://host"}, "presign_endpoint_url"),
        ({"bucket": "kiln", "page_size": 0}, "page_size"),
        ({"bucket": "kiln", "page_size": 1001}, "page_size"),
    ],
)
def test_bad_constructor_options_are_rejected(options: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument, match=field) as caught:
        S3Storage(**options)  # type: ignore[arg-type]
    assert caught.value.field == field
