"""Errors raised by every storage backend.

They subclass `shared.errors.KilnError`, so they carry a stable `code` and an HTTP status and
cross process boundaries as data. Backends translate their own failures (OS errors, botocore
errors) into these; callers never need to catch backend-specific exceptions.
"""

from __future__ import annotations

from shared.errors import KilnError


class StorageError(KilnError):
    """Any storage failure that none of the subclasses describes better."""

    code, http_status = "storage_error", 500


class InvalidArgument(StorageError, ValueError):
    """A caller passed a value the storage interface does not accept (content type, expiry …)."""

    code, http_status = "invalid_storage_argument", 400


class InvalidKey(InvalidArgument):
    """An object key or prefix breaks the key rules (see `shared.storage.keys`)."""

    code = "invalid_key"


class ObjectNotFound(StorageError, LookupError):
    """No object is stored under the key."""

    code, http_status = "object_not_found", 404

    def __init__(self, key: str) -> None:
        super().__init__(f"no stored object under key {key!r}")
        self.key = key


class StorageUnavailable(StorageError):
    """The backend cannot be reached or used: server down, bucket missing, folder unwritable."""

    code, http_status = "storage_unavailable", 503
