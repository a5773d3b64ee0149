"""Key rules shared by every backend, and the layout of job output keys."""

from __future__ import annotations

import pytest

from shared.storage import InvalidKey, is_valid_key, output_key, validate_key, validate_prefix


@pytest.mark.parametrize(
    "key",
    ["a", "outputs/job_0190a1b2c3d4abcdefghijklmnop/0.png", "A-Z_0-9=x/y.z", "x" * 1024, "a/b.c.d/e-f"],
)
def test_valid_keys_pass_unchanged(key: str) -> None:
    assert is_valid_key(key)
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key",
    ["", "/a", "a/", "a//b", "..", "a/../b", "./a", ".a", "a/.b", "a b", "a\\b", "a\x00b", "ä", "x" * 1025]
    + [None, b"a", 7],
    ids=repr,
)
def test_invalid_keys_name_the_rules(key: object) -> None:
    assert not is_valid_key(key)
    with pytest.raises(InvalidKey, match=r"invalid storage key .*parts separated by single '/'") as caught:
        validate_key(key)
    assert caught.value.field == "key"


@pytest.mark.parametrize("prefix", ["", "outputs", "outputs/", "outputs/job_1/", "outputs/job_1/0", "a/b-"])
def test_valid_prefixes(prefix: str) -> None:
    assert validate_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/", "/a", "a//", "../", "a/../", "a/.", ".", "a b", None])
def test_invalid_prefixes(prefix: object) -> None:
    with pytest.raises(InvalidKey, match="invalid storage prefix"):
        validate_prefix(prefix)


def test_the_empty_prefix_can_be_refused() -> None:
    with pytest.raises(InvalidKey, match=r"\(not empty\)"):
        validate_prefix("", allow_empty=False)


def test_output_keys_follow_the_documented_layout() -> None:
    job_id = "job_0190a1b2c3d4abcdefghijklmnop"
    assert output_key(job_id, 0, "png") == f"outputs/{job_id}/0.png"
    assert output_key("j", 12, "webp") == "outputs/j/12.webp"
    assert is_valid_key(output_key("j", 3, "jpg"))


@pytest.mark.parametrize(
    ("job_id", "index", "ext", "field"),
    [
        ("a/b", 0, "png", "job_id"),
        ("..", 0, "png", "job_id"),
        ("", 0, "png", "job_id"),
        ("j", -1, "png", "index"),
        ("j", True, "png", "index"),
        ("j", 1.0, "png", "index"),
        ("j", 0, ".png", "ext"),
        ("j", 0, "PNG", "ext"),
        ("j", 0, "", "ext"),
        ("j", 0, "toolongext", "ext"),
    ],
)
def test_output_key_rejects_bad_parts(job_id: str, index: int, ext: str, field: str) -> None:
    with pytest.raises(InvalidKey, match=f"invalid output {field.replace('_', ' ')}|invalid job id") as caught:
        output_key(job_id, index, ext)
    assert caught.value.field == field
