"""`LocalStorage`: objects as files below one folder, for a single machine.

Layout: the object `outputs/j/0.png` is the file `<root>/outputs/j/0.png`, so the API can send it
straight from disk (`path(key)`); its content type is a one-line sidecar file
`<root>/.meta/outputs/j/0.png`. Keys never have parts starting with `.`, so neither the sidecar
tree nor the temporary files below can collide with a key or show up in a listing.

Every file is written to a temporary name in the same folder, flushed, then renamed over the
target with `os.replace`, which POSIX makes atomic: a reader sees the old object or the new one,
never half of one. The sidecar is written before the data, so an object that becomes visible
already has its content type.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mimetypes
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from shared.storage.base import (
    DEFAULT_CONTENT_TYPE,
    Storage,
    StoredObject,
    validate_content_type,
    validate_data,
    validate_expiry,
)
from shared.storage.errors import InvalidKey, ObjectNotFound, StorageUnavailable
from shared.storage.keys import is_valid_key, validate_key, validate_prefix

logger = logging.getLogger(__name__)

META_DIR = ".meta"
_MISSING = (FileNotFoundError, IsADirectoryError, NotADirectoryError)
_MKSTEMP_TRIES = 3


class LocalStorage(Storage):
    """Objects stored as files below `root` (created on first write or health check).

    Args:
        root: the folder that holds every object.
        fsync: flush each file to disk before it becomes visible (durable across power loss).
    """

    kind = "local"

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root).expanduser().absolute()
        self._meta_root = self.root / META_DIR
        self._fsync = fsync

    def __repr__(self) -> str:
        return f"LocalStorage(root={str(self.root)!r})"

    def path(self, key: str) -> Path:
        """The file that holds `key`'s bytes (it may not exist), for serving it directly."""
        return self.root / validate_key(key)

    def put(self, key: str, data: bytes, content_type: str) -> StoredObject:
        path = self.path(key)
        content_type = validate_content_type(content_type)
        data = validate_data(data)
        with self._writing(key):
            _write_atomic(self._meta_root / key, content_type.encode("ascii"), self._fsync)
            _write_atomic(path, data, self._fsync)
        logger.debug("stored %s (%d bytes, %s) in %s", key, len(data), content_type, self.root)
        return StoredObject(key=key, size=len(data), content_type=content_type)

    def get(self, key: str) -> bytes:
        path = self.path(key)
        with self._reading(key):
            return path.read_bytes()

    def head(self, key: str) -> StoredObject:
        path = self.path(key)
        with self._reading(key):
            info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ObjectNotFound(key)
        return StoredObject(key=key, size=info.st_size, content_type=self._content_type(key))

    def open_stream(self, key: str) -> BinaryIO:
        path = self.path(key)
        with self._reading(key):
            return open(path, "rb")  # noqa: SIM115 - the caller closes it

    def delete(self, key: str) -> None:
        path = self.path(key)
        with self._writing(key):
            for file in (path, self._meta_root / key):
                with contextlib.suppress(*_MISSING):
                    file.unlink()
                _prune_empty_dirs(file.parent, stop=self.root)

    def list(self, prefix: str = "") -> list[str]:
        prefix = validate_prefix(prefix)
        # Only the folder named by the prefix's complete parts can hold matching keys.
        base = self.root / prefix.rpartition("/")[0]
        if not base.is_dir():
            return []
        try:
            keys = [key for key in self._walk(base) if key.startswith(prefix)]
        except OSError as exc:
            raise self._os_error(prefix, exc) from exc
        return sorted(keys)

    def url(self, key: str, expires_in: int) -> str | None:
        """Always `None`: a folder has no URL of its own, the API serves `path(key)` itself."""
        validate_key(key)
        validate_expiry(expires_in)
        return None

    def health(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise StorageUnavailable(f"local storage root {self.root} exists but is not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=".health-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StorageUnavailable(f"local storage root {self.root} is not writable: {exc.strerror}") from exc

    def _walk(self, base: Path) -> Iterator[str]:
        def on_error(exc: OSError) -> None:
            if not isinstance(exc, FileNotFoundError):  # a folder deleted meanwhile has no keys
                raise exc

        for dirpath, dirnames, filenames in os.walk(base, onerror=on_error):
            dirnames[:] = [name for name in dirnames if not name.startswith(".")]
            relative = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if relative == "." else f"{relative}/{name}"
                if is_valid_key(key):
                    yield key

    def _content_type(self, key: str) -> str:
        with contextlib.suppress(*_MISSING):
            return (self._meta_root / key).read_text("ascii").strip()
        return mimetypes.guess_type(key)[0] or DEFAULT_CONTENT_TYPE

    @contextlib.contextmanager
    def _reading(self, key: str) -> Iterator[None]:
        """Map OS errors of a read: a missing file (or a folder in its place) is a missing object."""
        try:
            yield
        except _MISSING:
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise self._os_error(key, exc) from exc

    @contextlib.contextmanager
    def _writing(self, key: str) -> Iterator[None]:
        """Map OS errors of a write or listing to storage errors."""
        try:
            yield
        except (FileExistsError, IsADirectoryError, NotADirectoryError):
            raise InvalidKey(
                f"key {key!r} cannot be stored in a folder: one of its parts is an existing object's "
                "name or another key's folder (e.g. 'a' and 'a/b')",
                field="key",
            ) from None
        except OSError as exc:
            raise self._os_error(key, exc) from exc

    def _os_error(self, key: str, exc: OSError) -> Exception:
        if exc.errno == errno.ENAMETOOLONG:
            return InvalidKey(f"key {key!r} is too long for the local file system", field="key")
        return StorageUnavailable(f"local storage root {self.root}: {key!r}: {exc.strerror or exc}")


def _write_atomic(path: Path, data: bytes, fsync: bool) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`."""
    fd, temp = _make_temp(path)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            if fsync:
                os.fsync(file.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _make_temp(path: Path) -> tuple[int, str]:
    """Create a hidden temporary file beside `path`, creating its folder if needed."""
    for _ in range(_MKSTEMP_TRIES - 1):
        # A concurrent delete may prune the new folder before mkstemp runs: make it again.
        with contextlib.suppress(FileNotFoundError):
            return _mkstemp_beside(path)
    return _mkstemp_beside(path)


def _mkstemp_beside(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")


def _prune_empty_dirs(folder: Path, stop: Path) -> None:
    """Remove `folder` and its parents while they are empty, never `stop` or above it."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass  # already pruned by a concurrent delete; its parent may be empty now
        except OSError:  # not empty: the folders above are not empty either
            return
        folder = folder.parent
