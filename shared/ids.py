"""Identifiers: job ids are time-ordered, URL-safe and unguessable."""

from __future__ import annotations

import re
import secrets
import time

_JOB_ID = re.compile(r"^job_[0-9a-f]{12}[0-9a-z]{16}$")


def new_job_id() -> str:
    """`job_` + 12 hex digits of milliseconds since the epoch + 16 random base-36 characters."""
    millis = int(time.time() * 1000)
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    tail = "".join(secrets.choice(alphabet) for _ in range(16))
    return f"job_{millis:012x}{tail}"


def is_job_id(value: str) -> bool:
    return bool(_JOB_ID.match(value))
