"""`Idempotency-Key` on job submission: the same key and body give the same job.

`p:idem:<api key id>:<sha256 of the header>` holds `<job id> <sha256 of the body>` with a TTL.
`claim` sets it only if absent (SET NX, atomic), so of two concurrent requests with one key
exactly one creates a job; the other reads the winner's entry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis

from shared.errors import BadRequest, Conflict
from shared.redis_keys import RedisKeys

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Claim:
    """`job_id` is the job this key names; `fresh` when this request must create it."""

    job_id: str
    fresh: bool


class Idempotency:
    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int) -> None:
        self.redis, self.names, self.ttl_s = client, RedisKeys(prefix), ttl_s

    def _key(self, scope: str, header: str) -> str:
        if not header or len(header) > MAX_KEY_LENGTH or not header.isprintable():
            raise BadRequest(f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters",
                             field="Idempotency-Key", code="invalid_idempotency_key")
        return self.names.idempotency(scope, hashlib.sha256(header.encode()).hexdigest())

    def claim(self, scope: str, header: str, body_hash: str, job_id: str) -> Claim:
        """Claim `header` for a new job `job_id`, or return the job it already names.

        Raises:
            Conflict: the key was used with a different body.
        """
        key = self._key(scope, header)
        if self.redis.set(key, f"{job_id} {body_hash}", nx=True, ex=self.ttl_s):
            return Claim(job_id, fresh=True)
        stored = self.redis.get(key) or ""
        existing, _, stored_hash = stored.partition(" ")
        if stored_hash != body_hash:
            raise Conflict("this Idempotency-Key was already used with a different request body",
                           field="Idempotency-Key", code="idempotency_key_reused")
        return Claim(existing, fresh=False)

    def release(self, scope: str, header: str, job_id: str) -> None:
        """Forget a claim whose job was never created (it failed a quota), if still ours."""
        key = self._key(scope, header)
        if (self.redis.get(key) or "").startswith(job_id + " "):
            self.redis.delete(key)


def body_hash(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()
