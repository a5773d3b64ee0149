"""Storage of job outputs behind one interface: a local folder or an S3-compatible bucket.

    storage = make_storage("s3", bucket="kiln", endpoint_url="http://127.0.0.1:9000")
    storage.put(output_key(job_id, 0, "png"), png_bytes, "image/png")
"""

from __future__ import annotations

import inspect

from shared.storage.base import StoredObject, Storage
from shared.storage.errors import (
    InvalidArgument,
    InvalidKey,
    ObjectNotFound,
    StorageError,
    StorageUnavailable,
)
from shared.storage.keys import is_valid_key, output_key, validate_key, validate_prefix
from shared.storage.local import LocalStorage
from shared.storage.s3 import S3Storage

BACKENDS: dict[str, type[Storage]] = {
    LocalStorage.kind: LocalStorage,
    S3Storage.kind: S3Storage,
}


def make_storage(kind: str, **options: object) -> Storage:
    """Build the backend named `kind` ("local" or "s3") from its constructor's keyword options.

    Raises:
        InvalidArgument: unknown kind, or an option the backend does not take (the message lists
            what is allowed).
    """
    backend = BACKENDS.get(kind)
    if backend is None:
        raise InvalidArgument(
            f"unknown storage kind {kind!r}: expected one of {', '.join(sorted(BACKENDS))}", field="storage"
        )
    accepted = [name for name in inspect.signature(backend).parameters]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InvalidArgument(
            f"{kind} storage does not take {', '.join(unknown)}: it accepts {', '.join(accepted)}", field="storage"
        )
    return backend(**options)  # type: ignore[arg-type]


__all__ = [
    "BACKENDS",
    "InvalidArgument",
    "InvalidKey",
    "LocalStorage",
    "ObjectNotFound",
    "S3Storage",
    "Storage",
    "StorageError",
    "StorageUnavailable",
    "StoredObject",
    "is_valid_key",
    "make_storage",
    "output_key",
    "validate_key",
    "validate_prefix",
]
