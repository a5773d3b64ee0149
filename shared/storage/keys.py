"""Object keys: the rules every backend enforces, and the layout of job outputs.

A key is 1–1024 ASCII characters: parts separated by single `/`, each part made of letters,
digits, `.`, `_`, `-` and `=`, and not starting with `.` (so `.` / `..` traversal is impossible
and backends may keep private files under dot-names). No leading or trailing `/`, no empty part.
The same key therefore names the same object on S3 and as a path below a local folder.
"""

from __future__ import annotations

import re

from shared.storage.errors import InvalidKey

MAX_KEY_LENGTH = 1024  # S3's limit, in bytes; keys are ASCII so characters == bytes.
_PART = r"[A-Za-z0-9_=-][A-Za-z0-9._=-]*"
_KEY = re.compile(rf"{_PART}(?:/{_PART})*")
# A prefix is a key, optionally followed by "/", optionally followed by the start of a part;
# or the empty string (everything).
_PREFIX = re.compile(rf"(?:{_PART}/)*(?:{_PART})?")
_EXT = re.compile(r"[a-z0-9]{1,8}")
OUTPUTS = "outputs"

KEY_RULES = (
    "1-1024 characters; parts separated by single '/'; each part of letters, digits, "
    "'.', '_', '-', '=' and not starting with '.'; no leading or trailing '/'"
)


def is_valid_key(key: object) -> bool:
    """Whether `key` follows the key rules."""
    return isinstance(key, str) and len(key) <= MAX_KEY_LENGTH and bool(_KEY.fullmatch(key))


def validate_key(key: object) -> str:
    """Return `key` unchanged, or raise `InvalidKey` naming the rules it breaks."""
    if not is_valid_key(key):
        raise InvalidKey(f"invalid storage key {key!r}: expected {KEY_RULES}", field="key")
    return key  # type: ignore[return-value]


def validate_prefix(prefix: object, *, allow_empty: bool = True) -> str:
    """Return a valid listing prefix unchanged, or raise `InvalidKey`.

    A prefix matches keys by plain string prefix, as S3 does: `outputs/a` matches both
    `outputs/a/0.png` and `outputs/ab/0.png`; `outputs/a/` only the first.
    """
    ok = isinstance(prefix, str) and len(prefix) <= MAX_KEY_LENGTH and bool(_PREFIX.fullmatch(prefix))
    if not ok or (prefix == "" and not allow_empty):
        allowed = "a key or the start of one" + ("" if allow_empty else " (not empty)")
        raise InvalidKey(f"invalid storage prefix {prefix!r}: expected {allowed}", field="prefix")
    return prefix  # type: ignore[return-value]


def output_key(job_id: str, index: int, ext: str) -> str:
    """The key of a job's `index`-th output: `outputs/<job id>/<index>.<ext>`.

    Deterministic, so a job that runs twice (at-least-once delivery) overwrites its own outputs.

    Args:
        job_id: the job's id; must be a single valid key part.
        index: 0-based position of the output within the job.
        ext: file extension without the dot, 1-8 lowercase letters or digits (`png`, `webp`).
    """
    if not isinstance(job_id, str) or "/" in job_id or not is_valid_key(job_id):
        raise InvalidKey(
            f"invalid job id {job_id!r} for an output key: expected one key part", field="job_id"
        )
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise InvalidKey(f"invalid output index {index!r}: expected an integer >= 0", field="index")
    if not isinstance(ext, str) or not _EXT.fullmatch(ext):
        raise InvalidKey(
            f"invalid output extension {ext!r}: expected 1-8 lowercase letters or digits, no dot", field="ext"
        )
    return f"{OUTPUTS}/{job_id}/{index}.{ext}"
