"""`S3Storage`: objects in one bucket of an S3-compatible server (AWS S3, MinIO, Ceph, moto …).

Compatibility choices, because many servers implement only part of AWS's behaviour:
SigV4 signing everywhere; path-style addressing by default (`http://host/bucket/key`, no
wildcard DNS needed); request checksums only where the API requires them (newer botocore adds
CRC32 headers to every upload by default, which older servers reject); `ContentType` always set;
ETags never interpreted (their format differs between servers and for multipart uploads).

Clients are created lazily, shared by storages with the same connection settings, and created
again after a `fork`, so a storage built in a parent process is safe to use in pre-forked workers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from shared.storage.base import (
    DEFAULT_CONTENT_TYPE,
    Storage,
    StoredObject,
    validate_content_type,
    validate_data,
    validate_expiry,
)
from shared.storage.errors import InvalidArgument, ObjectNotFound, StorageError, StorageUnavailable
from shared.storage.keys import validate_key, validate_prefix

logger = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1000  # ListObjectsV2 and DeleteObjects both cap a request at 1000 keys.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_NOT_FOUND = frozenset({"NoSuchKey", "NotFound", "404"})
_NO_BUCKET = frozenset({"NoSuchBucket"})
_DENIED = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden", "403"})
_UNREACHABLE = (BotoConnectionError, HTTPClientError)
_NO_CREDENTIALS = (NoCredentialsError, PartialCredentialsError)


class S3Storage(Storage):
    """Objects in the bucket `bucket` of an S3-compatible server.

    Args:
        bucket: bucket name (3-63 lowercase letters, digits, '.', '-').
        endpoint_url: the server, e.g. `http://127.0.0.1:9000`; `None` means AWS S3.
        region: signing region.
        access_key: access key id; `None` uses boto3's usual chain (environment, profile, role).
        secret_key: secret access key, with `access_key`.
        path_style: address buckets as `endpoint/bucket/key` (True) or `bucket.endpoint/key`.
        create_bucket: create the bucket now if it does not exist (idempotent).
        presign_endpoint_url: endpoint written into presigned URLs, when clients reach the
            server under another address than this process (e.g. `http://localhost:9000` vs
            `http://minio:9000`); default `endpoint_url`.
        connect_timeout: seconds to wait for a TCP connection.
        read_timeout: seconds to wait for a response.
        max_attempts: tries per request, including the first (botocore "standard" retries).
        page_size: keys per ListObjectsV2 page and per DeleteObjects request, 1 to 1000.
    """

    kind = "s3"

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        path_style: bool = True,
        create_bucket: bool = False,
        presign_endpoint_url: str | None = None,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_attempts: int = 4,
        page_size: int = MAX_PAGE_SIZE,
    ) -> None:
        self.bucket = _validate_bucket(bucket)
        self.endpoint_url = _validate_endpoint(endpoint_url, "endpoint_url")
        self.presign_endpoint_url = _validate_endpoint(presign_endpoint_url, "presign_endpoint_url")
        self.region = region
        self.page_size = _validate_page_size(page_size)
        self._connection = _Connection(
            endpoint_url=self.endpoint_url,
            region=region,
            access_key=access_key,
            secret_key=secret_key,
            path_style=bool(path_style),
            connect_timeout=float(connect_timeout),
            read_timeout=float(read_timeout),
            max_attempts=int(max_attempts),
        )
        presign_endpoint = self.presign_endpoint_url or self.endpoint_url
        self._presign_connection = replace(self._connection, endpoint_url=presign_endpoint)
        if create_bucket:
            self.ensure_bucket()

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        key = validate_key(key)
        content_type = validate_content_type(content_type)
        data = validate_data(data)
        with self._errors(key):
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        logger.debug("stored %s (%d bytes, %s) in s3://%s", key, len(data), content_type, self.bucket)
        return StoredObject(key=key, size=len(data), content_type=content_type)

    def get(self, key: str) -> bytes:
        with self.open_stream(key) as body, self._errors(key):
            return body.read()

    def head(self, key: str) -> StoredObject:
        key = validate_key(key)
        with self._errors(key):
            meta = self._client.head_object(Bucket=self.bucket, Key=key)
        content_type = meta.get("ContentType") or DEFAULT_CONTENT_TYPE
        return StoredObject(key=key, size=int(meta["ContentLength"]), content_type=content_type)

    def open_stream(self, key: str) -> BinaryIO:
        key = validate_key(key)
        with self._errors(key):
            return self._client.get_object(Bucket=self.bucket, Key=key)["Body"]

    def delete(self, key: str) -> None:
        key = validate_key(key)
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=key)  # S3 answers 204 for no object

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(validate_prefix(prefix, allow_empty=False))
        for start in range(0, len(keys), self.page_size):
            self._delete_batch(keys[start : start + self.page_size])
        return len(keys)

    def list(self, prefix: str = "") -> list[str]:
        prefix = validate_prefix(prefix)
        with self._errors():
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": self.page_size}
            )
            keys = [item["Key"] for page in pages for item in page.get("Contents", [])]
        return sorted(keys)

    def url(self, key: str, expires_in: int) -> str:
        params = {"Bucket": self.bucket, "Key": validate_key(key)}
        expires_in = validate_expiry(expires_in)
        with self._errors(key):
            return self._presigner.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)

    def health(self) -> None:
        with self._errors():
            self._client.head_bucket(Bucket=self.bucket)

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists already (safe to call from many processes at once)."""
        if self._bucket_exists():
            return
        with self._errors():
            try:
                self._client.create_bucket(Bucket=self.bucket, **self._location())
            except ClientError as exc:
                # Lost a race with another process, or the name is taken by someone else.
                taken = _code(exc) in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}
                if not taken or not self._bucket_exists():
                    raise
                return
        logger.info("created S3 bucket %r at %s", self.bucket, self._where)

    def _bucket_exists(self) -> bool:
        with self._errors():
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _code(exc) in _NOT_FOUND | _NO_BUCKET:
                    return False
                raise
        return True

    def _delete_batch(self, keys: list[str]) -> None:
        objects = [{"Key": key} for key in keys]
        with self._errors():
            answer = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
        failed = answer.get("Errors") or []
        if failed:
            first = failed[0]
            raise StorageError(
                f"S3 refused to delete {len(failed)} of {len(keys)} objects in bucket {self.bucket!r}; "
                f"first {first.get('Key')!r}: {first.get('Code')}: {first.get('Message')}"
            )

    def _location(self) -> dict[str, Any]:
        # us-east-1 is the default location and must not be named (AWS rejects it).
        if self.region == "us-east-1":
            return {}
        return {"CreateBucketConfiguration": {"LocationConstraint": self.region}}

    @property
    def _where(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region})"

    @property
    def _client(self) -> BaseClient:
        return _client_for(self._connection)

    @property
    def _presigner(self) -> BaseClient:
        return _client_for(self._presign_connection)

    @contextlib.contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        """Translate botocore failures into storage errors; `key` is the object concerned, if any."""
        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, key) from exc
        except _UNREACHABLE as exc:
            raise StorageUnavailable(f"S3 endpoint {self._where} is unreachable: {exc}") from exc
        except _NO_CREDENTIALS as exc:
            raise StorageUnavailable(f"no usable S3 credentials for bucket {self.bucket!r}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"S3 request to {self._where} failed: {exc}") from exc

    def _client_error(self, exc: ClientError, key: str | None) -> StorageError:
        code = _code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _NOT_FOUND and key is not None:
            return ObjectNotFound(key)
        if code in _NO_BUCKET or code in _NOT_FOUND:
            return StorageUnavailable(f"S3 bucket {self.bucket!r} does not exist at {self._where}")
        if code in _DENIED:
            return StorageUnavailable(
                f"S3 at {self._where} denied access to bucket {self.bucket!r} ({code}): check the credentials"
            )
        message = exc.response.get("Error", {}).get("Message", "")
        if status >= 500 or code in {"SlowDown", "ServiceUnavailable"}:
            return StorageUnavailable(f"S3 at {self._where} is failing: {code}: {message}")
        return StorageError(f"S3 at {self._where} rejected a request on bucket {self.bucket!r}: {code}: {message}")


@dataclass(frozen=True)
class _Connection:
    """Everything a boto3 client is built from; storages with equal connections share a client."""

    endpoint_url: str | None
    region: str
    access_key: str | None
    secret_key: str | None = field(repr=False)
    path_style: bool
    connect_timeout: float
    read_timeout: float
    max_attempts: int


_clients: dict[tuple[int, _Connection], BaseClient] = {}
_clients_lock = threading.Lock()


def _client_for(connection: _Connection) -> BaseClient:
    """The process's client for `connection`.

    boto3 clients are thread-safe but must not cross a `fork` (hence the pid in the cache key),
    and building one costs a few hundred milliseconds, so each process builds one per connection.
    """
    cache_key = (os.getpid(), connection)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            client = _clients[cache_key] = _new_client(connection)
    return client


def _new_client(connection: _Connection) -> BaseClient:
    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path" if connection.path_style else "virtual"},
        retries={"mode": "standard", "max_attempts": connection.max_attempts},
        connect_timeout=connection.connect_timeout,
        read_timeout=connection.read_timeout,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=connection.endpoint_url,
        region_name=connection.region,
        aws_access_key_id=connection.access_key,
        aws_secret_access_key=connection.secret_key,
        config=config,
    )


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _validate_bucket(bucket: object) -> str:
    if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
        raise InvalidArgument(
            f"invalid S3 bucket name {bucket!r}: expected 3-63 lowercase letters, digits, '.' or '-', "
            "starting and ending with a letter or digit",
            field="bucket",
        )
    return bucket


def _validate_endpoint(url: object, field: str) -> str | None:
    if url is None:
        return None
    if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/]+(/\S*)?", url):
        raise InvalidArgument(f"invalid {field} {url!r}: expected an http:// or https:// URL", field=field)
    return url


def _validate_page_size(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidArgument(
            f"invalid page_size {size!r}: expected an integer from 1 to {MAX_PAGE_SIZE}", field="page_size"
        )
    return size
