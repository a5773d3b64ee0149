"""What only the local-folder backend does: files on disk, atomic writes, sidecar content types."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.storage import InvalidKey, LocalStorage, StorageUnavailable, StoredObject


def _stray_files(root: Path) -> list[str]:
    """Files below `root` that are neither an object nor its content-type sidecar."""
    return [str(path) for path in root.rglob("*") if path.is_file() and path.name.endswith(".tmp")]


def test_url_is_none_so_the_api_serves_the_file(local_storage: LocalStorage) -> None:
    local_storage.put("outputs/j/0.png", b"png", "image/png")

    assert local_storage.url("outputs/j/0.png", 3600) is None
    assert local_storage.path("outputs/j/0.png") == local_storage.root / "outputs" / "j" / "0.png"
    assert local_storage.path("outputs/j/0.png").read_bytes() == b"png"


def test_writes_leave_no_temporary_files(local_storage: LocalStorage) -> None:
    for index in range(3):
        local_storage.put(f"outputs/j/{index}.png", b"png", "image/png")
        local_storage.put(f"outputs/j/{index}.png", b"png", "image/png")

    assert _stray_files(local_storage.root) == []
    assert local_storage.list() == [f"outputs/j/{index}.png" for index in range(3)]


def test_a_failed_write_keeps_the_old_object_whole(
    local_storage: LocalStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    local_storage.put("outputs/j/0.png", b"old bytes", "image/png")

    def disk_full(source: str, target: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(StorageUnavailable, match="No space left on device"):
        local_storage.put("outputs/j/0.png", b"new bytes", "image/png")
    monkeypatch.undo()

    assert local_storage.get("outputs/j/0.png") == b"old bytes"
    assert local_storage.head("outputs/j/0.png").content_type == "image/png"
    assert _stray_files(local_storage.root) == []


def test_files_that_are_not_valid_keys_are_not_listed(local_storage: LocalStorage) -> None:
    local_storage.put("outputs/j/0.png", b"png", "image/png")
    (local_storage.root / "outputs" / "j" / ".0.png.abc.tmp").write_bytes(b"half")
    (local_storage.root / "outputs" / "j" / "bad name.png").write_bytes(b"x")
    (local_storage.root / ".DS_Store").write_bytes(b"x")

    assert local_storage.list() == ["outputs/j/0.png"]


@pytest.mark.parametrize(
    ("name", "content_type"), [("dropped.png", "image/png"), ("dropped.zzz", "application/octet-stream")]
)
def test_files_placed_by_hand_get_a_content_type_from_their_extension(
    local_storage: LocalStorage, name: str, content_type: str
) -> None:
    local_storage.root.mkdir(parents=True)
    (local_storage.root / name).write_bytes(b"1234")

    assert local_storage.head(name) == StoredObject(key=name, size=4, content_type=content_type)


def test_a_key_cannot_be_both_an_object_and_a_folder(local_storage: LocalStorage) -> None:
    local_storage.put("a", b"x", "text/plain")
    with pytest.raises(InvalidKey, match="'a/b' cannot be stored"):
        local_storage.put("a/b", b"x", "text/plain")

    local_storage.put("c/d", b"x", "text/plain")
    with pytest.raises(InvalidKey, match="'c' cannot be stored"):
        local_storage.put("c", b"x", "text/plain")
    assert local_storage.list() == ["a", "c/d"]


def test_deleting_the_last_object_of_a_folder_removes_the_folder(local_storage: LocalStorage) -> None:
    local_storage.put("outputs/job_1/0.png", b"x", "image/png")
    local_storage.put("outputs/job_2/0.png", b"x", "image/png")

    local_storage.delete_prefix("outputs/job_1/")

    assert not (local_storage.root / "outputs" / "job_1").exists()
    assert (local_storage.root / "outputs" / "job_2" / "0.png").exists()
    assert local_storage.root.is_dir()


def test_the_root_is_created_on_first_write(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "not" / "yet")

    assert storage.list() == []
    storage.put("k", b"x", "text/plain")
    assert (tmp_path / "not" / "yet" / "k").read_bytes() == b"x"


def test_health_creates_a_missing_root(tmp_path: Path) -> None:
    LocalStorage(tmp_path / "fresh").health()

    assert (tmp_path / "fresh").is_dir()
    assert list((tmp_path / "fresh").iterdir()) == []


def test_health_fails_when_the_root_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "root").write_text("not a folder")

    with pytest.raises(StorageUnavailable, match=r"root .*root exists but is not a folder") as caught:
        LocalStorage(tmp_path / "root").health()
    assert (caught.value.code, caught.value.http_status) == ("storage_unavailable", 503)


def test_health_fails_when_the_root_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("blocks the folder below it")

    with pytest.raises(StorageUnavailable, match="is not writable"):
        LocalStorage(tmp_path / "file" / "root").health()
