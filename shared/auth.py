"""API keys: created, verified, listed and revoked here; used by the API and the admin dashboard.

A key is shown once, as `kiln_<key id>_<secret>` (the secret is 32 random bytes, URL-safe). Only
its SHA-256 is stored: a high-entropy secret needs no slow hash. Redis layout (prefix `p`):

    p:key:<key id>        hash: id, name, role, owner, hash, created_at, revoked_at,
                                last_used_at, requests, submissions, webhook_secret
    p:keyhash:<sha256>    the key id (lookup by presented secret)
    p:keys                sorted set of key ids by creation time

`webhook_secret` signs this key's webhooks (an HMAC key, not a credential, so kept in clear).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Literal

import redis

from shared.errors import NotFound, ValidationFailed
from shared.redis_keys import DEFAULT_PREFIX, RedisKeys

Role = Literal["user", "admin"]
ROLES: tuple[str, ...] = ("user", "admin")
LOCAL_KEY_ID = "local"
TOKEN_PREFIX = "kiln_"
OWNER_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
NAME_MAX = 100


@dataclass(frozen=True)
class Principal:
    """Who a request acts as."""

    key_id: str
    owner: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


LOCAL_PRINCIPAL = Principal(key_id=LOCAL_KEY_ID, owner="local", role="admin")


@dataclass(frozen=True)
class CreatedKey:
    """A new key; `secret` is the full bearer token, shown once."""

    key: dict
    secret: str


def check_key_fields(role: str, name: str, owner: str | None) -> None:
    """The one validation of a new key's fields, for the API and the dashboard alike."""
    if role not in ROLES:
        raise ValidationFailed(f"role must be one of {list(ROLES)} (got {role!r})", field="role")
    if len(name) > NAME_MAX:
        raise ValidationFailed(f"name must be at most {NAME_MAX} characters", field="name")
    if owner is not None and not re.fullmatch(OWNER_PATTERN, owner):
        raise ValidationFailed("owner must be 1-64 letters, digits, '_', '.' or '-'", field="owner")


def hash_secret(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class KeyStore:
    """API keys in Redis (see the module docstring for the layout)."""

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self.redis = client
        self.names = RedisKeys(prefix)

    def _key(self, key_id: str) -> str:
        return self.names.api_key(key_id)

    def _by_hash(self, digest: str) -> str:
        return self.names.api_key_by_hash(digest)

    def create(self, role: str = "user", name: str = "", owner: str | None = None,
               token: str | None = None) -> CreatedKey:
        """Create a key; `token` registers a given secret (the bootstrap admin key)."""
        check_key_fields(role, name, owner)
        key_id = "key_" + (hash_secret(token)[:16] if token else secrets.token_hex(8))
        token = token or f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        digest = hash_secret(token)
        record = {"id": key_id, "name": name, "role": role, "owner": owner or key_id, "hash": digest,
                  "created_at": repr(time.time()), "revoked_at": "", "last_used_at": "",
                  "requests": 0, "submissions": 0, "webhook_secret": secrets.token_hex(32)}
        if not self.redis.set(self._by_hash(digest), key_id, nx=True):
            return CreatedKey(self.get(self.redis.get(self._by_hash(digest))), token)
        self.redis.hset(self._key(key_id), mapping=record)
        self.redis.zadd(self.names.api_keys, {key_id: time.time()})
        return CreatedKey(self.get(key_id), token)

    def verify(self, token: str) -> Principal | None:
        """The principal of a presented bearer token, or None (unknown or revoked)."""
        digest = hash_secret(token)
        key_id = self.redis.get(self._by_hash(digest))
        if not key_id:
            return None
        raw = self.redis.hgetall(self._key(key_id))
        if not raw or raw.get("revoked_at") or not hmac.compare_digest(raw.get("hash", ""), digest):
            return None
        pipe = self.redis.pipeline(transaction=False)
        pipe.hincrby(self._key(key_id), "requests", 1)
        pipe.hset(self._key(key_id), "last_used_at", repr(time.time()))
        pipe.execute()
        return Principal(key_id=key_id, owner=raw["owner"], role=raw["role"])

    def is_active(self, key_id: str) -> bool:
        """Whether `key_id` still exists unrevoked (the local principal always does)."""
        if key_id == LOCAL_KEY_ID:
            return True
        found = self.redis.hmget(self._key(key_id), "id", "revoked_at")
        return bool(found[0]) and not found[1]

    def count_submission(self, key_id: str) -> None:
        if key_id != LOCAL_KEY_ID:
            self.redis.hincrby(self._key(key_id), "submissions", 1)

    def get(self, key_id: str) -> dict:
        raw = self.redis.hgetall(self._key(key_id))
        if not raw:
            raise NotFound(f"no API key {key_id!r}", field="key_id")
        return _public(raw)

    def list(self, limit: int = 1000) -> list[dict]:
        ids = self.redis.zrange(self.names.api_keys, 0, limit - 1)
        pipe = self.redis.pipeline(transaction=False)
        for key_id in ids:
            pipe.hgetall(self._key(key_id))
        return [_public(raw) for raw in pipe.execute() if raw]

    def revoke(self, key_id: str) -> dict:
        """Revoke a key for good; revoking twice keeps the first time."""
        self.get(key_id)
        if not self.redis.hget(self._key(key_id), "revoked_at"):
            self.redis.hset(self._key(key_id), "revoked_at", repr(time.time()))
        return self.get(key_id)

    def webhook_secret(self, key_id: str) -> str:
        """The secret that signs this key's webhooks (the local principal gets one too)."""
        if key_id == LOCAL_KEY_ID:
            self.redis.hsetnx(self._key(LOCAL_KEY_ID), "webhook_secret", secrets.token_hex(32))
        return self.redis.hget(self._key(key_id), "webhook_secret") or ""


def _public(raw: dict[str, str]) -> dict:
    """What a listing shows: never the hash, never the webhook secret."""
    def ts(name: str) -> float | None:
        return float(raw[name]) if raw.get(name) else None

    return {"id": raw["id"], "name": raw.get("name", ""), "role": raw["role"], "owner": raw["owner"],
            "created_at": ts("created_at"), "revoked_at": ts("revoked_at"), "last_used_at": ts("last_used_at"),
            "usage": {"requests": int(raw.get("requests", 0)), "submissions": int(raw.get("submissions", 0))}}


# Module-level helpers for the dashboard and scripts -------------------------------------------
def key_store(settings) -> KeyStore:
    return KeyStore(redis.Redis.from_url(settings.redis_url, decode_responses=True), settings.key_prefix)


def create_key(store: KeyStore, role: str = "user", name: str = "", owner: str | None = None) -> CreatedKey:
    return store.create(role=role, name=name, owner=owner)


def verify_key(store: KeyStore, token: str) -> Principal | None:
    return store.verify(token)


def revoke_key(store: KeyStore, key_id: str) -> dict:
    return store.revoke(key_id)


def list_keys(store: KeyStore) -> list[dict]:
    return store.list()
