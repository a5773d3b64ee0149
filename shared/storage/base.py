"""The storage interface every backend implements, and the value `put` returns.

Objects are immutable byte strings with a content type, addressed by a key (see `keys.py`).
Writes are whole-object and idempotent: putting the same key again replaces the object, so a job
that is delivered twice and re-uploads its outputs leaves exactly one copy of each.
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass
from typing import BinaryIO, ClassVar

from shared.storage.errors import InvalidArgument, ObjectNotFound
from shared.storage.keys import validate_prefix

DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_URL_EXPIRY_S = 7 * 24 * 3600  # SigV4 presigned URLs live at most 7 days.
_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*"
# RFC 6838 type/subtype, optional parameters; printable ASCII only (no header injection).
_CONTENT_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(?: *;[ -~]*)?")


@dataclass(frozen=True)
class StoredObject:
    """What is stored under a key: its size in bytes and its content type."""

    key: str
    size: int
    content_type: str


def validate_content_type(content_type: object) -> str:
    """Return `content_type` unchanged if it is a `type/subtype` media type, else raise."""
    if not isinstance(content_type, str) or not _CONTENT_TYPE.fullmatch(content_type):
        raise InvalidArgument(
            f"invalid content type {content_type!r}: expected a media type such as 'image/png'",
            field="content_type",
        )
    return content_type


def validate_data(data: object) -> bytes:
    """Return `data` as bytes; only bytes-like objects can be stored."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"storage data must be bytes, bytearray or memoryview, not {type(data).__name__}")
    return bytes(data)


def validate_expiry(expires_in: object) -> int:
    """Return a presigned-URL lifetime in seconds, 1 to 7 days' worth, else raise."""
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or not 1 <= expires_in <= MAX_URL_EXPIRY_S:
        raise InvalidArgument(
            f"invalid URL expiry {expires_in!r}: expected whole seconds from 1 to {MAX_URL_EXPIRY_S}",
            field="expires_in",
        )
    return expires_in


class Storage(abc.ABC):
    """A flat key → bytes store. All methods validate keys and raise `shared.storage.errors`.

    Implementations are safe to share between threads.
    """

    kind: ClassVar[str]

    @abc.abstractmethod
    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        """Store `data` under `key`, replacing what was there. Readers never see a partial object."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; `ObjectNotFound` if there is none."""

    @abc.abstractmethod
    def head(self, key: str) -> StoredObject:
        """The object's size and content type without its bytes; `ObjectNotFound` if none."""

    @abc.abstractmethod
    def open_stream(self, key: str) -> BinaryIO:
        """A readable binary file object over the object (use as a context manager)."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a key with no object is not an error."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """All keys starting with `prefix` (plain string prefix), sorted, across all pages."""

    @abc.abstractmethod
    def url(self, key: str, expires_in: int) -> str | None:
        """A URL a client can GET the object from for `expires_in` seconds.

        `None` means the backend has no URL of its own and the API must serve the bytes.
        The object's existence is not checked.
        """

    @abc.abstractmethod
    def health(self) -> None:
        """Return if the backend is usable, else raise `StorageUnavailable` saying why."""

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""
        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        """The object's size in bytes; `ObjectNotFound` if there is none."""
        return self.head(key).size

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with `prefix` (not empty); return how many."""
        keys = self.list(validate_prefix(prefix, allow_empty=False))
        for key in keys:
            self.delete(key)
        return len(keys)
