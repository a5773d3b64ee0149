"""The contract every storage backend keeps; each test runs on the local folder and on S3."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from shared.errors import KilnError
from shared.storage import (
    InvalidArgument,
    InvalidKey,
    ObjectNotFound,
    Storage,
    StoredObject,
    output_key,
)
from tests.storage.conftest import PAGE_SIZE

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4

INVALID_KEYS = [
    "",
    "/outputs/a.png",
    "outputs/",
    "outputs//a.png",
    "../a.png",
    "outputs/../a.png",
    "outputs/./a.png",
    ".hidden",
    "outputs/.tmp",
    "with space",
    "back\\slash",
    "new\nline",
    "é.png",
    "a" * 1025,
    None,
    42,
]


def test_put_then_get_roundtrips(storage: Storage) -> None:
    stored = storage.put("outputs/job_1/0.png", PNG, "image/png")

    assert stored == StoredObject(key="outputs/job_1/0.png", size=len(PNG), content_type="image/png")
    assert storage.get("outputs/job_1/0.png") == PNG


@pytest.mark.parametrize(
    ("key", "content_type"),
    [
        ("outputs/j/0.png", "image/png"),
        ("outputs/j/meta.json", "application/json"),
        ("outputs/j/notes.txt", "text/plain; charset=utf-8"),
        ("outputs/j/blob", "image/webp"),  # the stored type wins over the (missing) extension
    ],
)
def test_head_reports_size_and_stored_content_type(storage: Storage, key: str, content_type: str) -> None:
    storage.put(key, b"12345", content_type)

    assert storage.head(key) == StoredObject(key=key, size=5, content_type=content_type)
    assert storage.size(key) == 5


def test_exists_follows_put_and_delete(storage: Storage) -> None:
    assert not storage.exists("a/b.bin")
    storage.put("a/b.bin", b"x", "application/octet-stream")
    assert storage.exists("a/b.bin")
    storage.delete("a/b.bin")
    assert not storage.exists("a/b.bin")
    assert storage.list() == []


def test_empty_object_is_an_object(storage: Storage) -> None:
    storage.put("empty.bin", b"", "application/octet-stream")

    assert storage.exists("empty.bin")
    assert storage.get("empty.bin") == b""
    assert storage.size("empty.bin") == 0


@pytest.mark.parametrize("read", ["get", "head", "size", "open_stream"])
def test_reading_a_missing_object_raises_object_not_found(storage: Storage, read: str) -> None:
    storage.put("outputs/other.png", PNG, "image/png")

    with pytest.raises(ObjectNotFound, match="outputs/missing.png") as caught:
        getattr(storage, read)("outputs/missing.png")
    assert caught.value.key == "outputs/missing.png"
    assert isinstance(caught.value, KilnError)
    assert (caught.value.code, caught.value.http_status) == ("object_not_found", 404)


def test_a_folder_of_other_keys_is_not_an_object(storage: Storage) -> None:
    storage.put("outputs/job_1/0.png", PNG, "image/png")

    assert not storage.exists("outputs/job_1")
    with pytest.raises(ObjectNotFound):
        storage.get("outputs/job_1")


def test_deleting_a_missing_object_is_fine(storage: Storage) -> None:
    storage.delete("never/stored.png")
    storage.put("kept.png", PNG, "image/png")
    storage.delete("kept.png")
    storage.delete("kept.png")

    assert storage.list() == []


def test_put_twice_keeps_one_identical_object(storage: Storage) -> None:
    key = output_key("job_retry", 0, "png")
    first = storage.put(key, PNG, "image/png")
    second = storage.put(key, PNG, "image/png")

    assert first == second
    assert storage.list("outputs/") == [key]
    assert storage.get(key) == PNG


def test_put_replaces_bytes_and_content_type(storage: Storage) -> None:
    storage.put("x/out", b"old", "image/png")
    storage.put("x/out", b"newer", "image/jpeg")

    assert storage.get("x/out") == b"newer"
    assert storage.head("x/out") == StoredObject(key="x/out", size=5, content_type="image/jpeg")


def test_concurrent_puts_of_one_key_leave_one_whole_object(storage: Storage) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: storage.put("race/0.png", PNG, "image/png"), range(8)))

    assert {result.size for result in results} == {len(PNG)}
    assert storage.list() == ["race/0.png"]
    assert storage.get("race/0.png") == PNG


@pytest.mark.parametrize("data", [bytearray(b"abc"), memoryview(b"abc")])
def test_bytes_like_data_is_stored(storage: Storage, data: bytes) -> None:
    storage.put("bytes-like", data, "application/octet-stream")

    assert storage.get("bytes-like") == b"abc"


@pytest.mark.parametrize("data", ["text", None, [1, 2]])
def test_non_bytes_data_is_rejected(storage: Storage, data: object) -> None:
    with pytest.raises(TypeError, match="bytes"):
        storage.put("k", data, "text/plain")  # type: ignore[arg-type]
    assert storage.list() == []


@pytest.mark.parametrize("content_type", ["", "png", "image/", "/png", "text/plain\r\nX-Evil: 1", None])
def test_invalid_content_type_is_rejected(storage: Storage, content_type: object) -> None:
    with pytest.raises(InvalidArgument, match="content type") as caught:
        storage.put("k.png", PNG, content_type)  # type: ignore[arg-type]
    assert caught.value.field == "content_type"
    assert storage.list() == []


@pytest.mark.parametrize("key", INVALID_KEYS, ids=repr)
def test_invalid_keys_are_rejected(storage: Storage, key: object) -> None:
    with pytest.raises(InvalidKey, match="invalid storage key") as caught:
        storage.put(key, PNG, "image/png")  # type: ignore[arg-type]
    assert (caught.value.code, caught.value.http_status, caught.value.field) == ("invalid_key", 400, "key")
    assert storage.list() == []


@pytest.mark.parametrize("operation", ["get", "head", "exists", "size", "delete", "url", "open_stream"])
def test_every_operation_checks_its_key(storage: Storage, operation: str) -> None:
    arguments = (60,) if operation == "url" else ()

    with pytest.raises(InvalidKey, match="invalid storage key"):
        getattr(storage, operation)("outputs/../secret", *arguments)


@pytest.mark.parametrize("prefix", ["/", "/outputs", "outputs//", "../", "outputs/../x", ".meta/", "a b"])
def test_invalid_prefixes_are_rejected(storage: Storage, prefix: str) -> None:
    with pytest.raises(InvalidKey, match="invalid storage prefix"):
        storage.list(prefix)
    with pytest.raises(InvalidKey, match="invalid storage prefix"):
        storage.delete_prefix(prefix)


def test_list_matches_by_plain_string_prefix_and_sorts(storage: Storage) -> None:
    keys = ["outputs/b/0.png", "outputs/a/1.png", "outputs/ab/0.png", "outputs/a/0.png", "inputs/a/0.png"]
    for key in keys:
        storage.put(key, b"x", "image/png")

    assert storage.list() == sorted(keys)
    assert storage.list("outputs/a") == ["outputs/a/0.png", "outputs/a/1.png", "outputs/ab/0.png"]
    assert storage.list("outputs/a/") == ["outputs/a/0.png", "outputs/a/1.png"]
    assert storage.list("outputs/a/1") == ["outputs/a/1.png"]
    assert storage.list("outputs/c") == []
    assert storage.list("nothing/here/") == []


def test_list_returns_every_key_across_pages(storage: Storage) -> None:
    keys = [f"many/{index:03d}.bin" for index in range(4 * PAGE_SIZE + 3)]
    for key in reversed(keys):
        storage.put(key, b"", "application/octet-stream")

    assert storage.list("many/") == keys


def test_delete_prefix_removes_only_matching_objects(storage: Storage) -> None:
    doomed = [output_key("job_a", index, "png") for index in range(2 * PAGE_SIZE + 1)]
    kept = [output_key("job_ab", 0, "png"), output_key("job_b", 0, "png")]
    for key in doomed + kept:
        storage.put(key, PNG, "image/png")

    assert storage.delete_prefix("outputs/job_a/") == len(doomed)
    assert storage.list() == sorted(kept)
    assert storage.delete_prefix("outputs/job_a/") == 0


def test_delete_prefix_refuses_to_delete_everything(storage: Storage) -> None:
    storage.put("keep.png", PNG, "image/png")

    with pytest.raises(InvalidKey, match="not empty"):
        storage.delete_prefix("")
    assert storage.list() == ["keep.png"]


def test_open_stream_reads_the_object(storage: Storage) -> None:
    storage.put("stream.png", PNG, "image/png")

    with storage.open_stream("stream.png") as stream:
        assert stream.read(8) == PNG[:8]
        assert stream.read() == PNG[8:]


@pytest.mark.parametrize("expires_in", [0, -1, 7 * 24 * 3600 + 1, 1.5, "60", True])
def test_url_rejects_bad_expiry(storage: Storage, expires_in: object) -> None:
    with pytest.raises(InvalidArgument, match="expiry") as caught:
        storage.url("outputs/a.png", expires_in)  # type: ignore[arg-type]
    assert caught.value.field == "expires_in"


def test_health_passes_on_a_working_backend(storage: Storage) -> None:
    storage.health()
