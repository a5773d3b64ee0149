"""Webhooks: a signed POST to a job's `webhook_url` when it ends (and, if configured, starts).

Signature: `Kiln-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, with
the secret of the API key that submitted the job. Receivers recompute it over the raw body and
reject old timestamps (replay). Other headers: `Kiln-Event` (`job.started`, `job.succeeded`,
`job.failed`, `job.canceled`), `Kiln-Delivery` (`<job id>:<event>`, same on every retry),
`Kiln-Timestamp`.

Delivery state lives in Redis, so any number of deliverers share the work and a restart loses
nothing (prefix `p`):

    p:webhooks:watch          sorted set of job ids with a webhook that have not ended yet
    p:webhooks:due            sorted set of JSON deliveries, scored by when to try next
    p:webhook:sent:<id>:<ev>  set once an event is scheduled, so it is scheduled once
    p:webhook:log:<id>        list of JSON attempts (shown on the job), kept for the retention

Retries: after attempt n (1-based) fails, the next comes `backoff_s * 2**(n-1)` later, up to
`max_attempts`. A 2xx answer is success.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import redis

from shared import safehttp
from shared.errors import InputRefused
from shared.jobs.record import Job, Status
from shared.jobs.store import JobStore

logger = logging.getLogger(__name__)

# KEYS[1] due zset. ARGV: now, claim seconds. Claims the first due delivery by pushing its score
# past the claim window, so another deliverer does not take it meanwhile.
CLAIM = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
if #due == 0 then return false end
redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), due[1])
return due[1]
"""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `"<timestamp>.<body>"` (RFC 2104)."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify(secret: str, header: str, body: bytes, tolerance_s: float = 300, now: float | None = None) -> bool:
    """Check a `Kiln-Signature` header (for receivers and tests)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    stamp = fields.get("t", "")
    if not (stamp.isascii() and stamp.isdigit()) or "v1" not in fields:  # "²".isdigit() is true too
        return False
    if abs((now or time.time()) - int(stamp)) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, int(stamp), body), fields["v1"])


@dataclass(frozen=True)
class WebhookConfig:
    max_attempts: int
    backoff_s: float
    timeout_s: float
    allow_private: bool
    on_start: bool
    public_url: str
    retention_s: int


class Webhooks:
    def __init__(self, client: redis.Redis, prefix: str, config: WebhookConfig,
                 secret_for: Callable[[str], str]) -> None:
        self.redis, self.config = client, config
        self.jobs = JobStore(client, prefix)  # reads only: job statuses and records
        self.names = self.jobs.names
        self.secret_for = secret_for
        self._claim = client.register_script(CLAIM)
        self.watch_key, self.due_key = self.names.webhooks_watch, self.names.webhooks_due

    def watch(self, job_id: str) -> None:
        """Called at submission for a job with a webhook."""
        self.redis.zadd(self.watch_key, {job_id: time.time()})

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        return [json.loads(item) for item in self.redis.lrange(self.names.webhook_log(job_id), 0, -1)]

    # Scheduling ---------------------------------------------------------------------------------
    def scan(self, limit: int = 500) -> int:
        """Schedule deliveries for watched jobs that started or ended; returns how many."""
        ids = self.redis.zrange(self.watch_key, 0, limit - 1)
        if not ids:
            return 0
        scheduled = 0
        for job_id, status in zip(ids, self.jobs.statuses(ids)):
            if status is None or status.terminal:
                self.redis.zrem(self.watch_key, job_id)
            if status is not None and status.terminal:
                scheduled += self._schedule(job_id, f"job.{status.value}")
            elif status is Status.RUNNING and self.config.on_start:
                scheduled += self._schedule(job_id, "job.started")
        return scheduled

    def _schedule(self, job_id: str, event: str) -> int:
        if not self.redis.set(self.names.webhook_sent(job_id, event), 1, nx=True,
                              ex=self.config.retention_s):
            return 0
        delivery = json.dumps({"job_id": job_id, "event": event, "attempt": 1})
        self.redis.zadd(self.due_key, {delivery: time.time()})
        return 1

    # Delivery -----------------------------------------------------------------------------------
    def deliver_due(self, limit: int = 20) -> int:
        """Attempt up to `limit` due deliveries; returns how many were attempted."""
        done = 0
        while done < limit:
            claim_s = self.config.timeout_s + 30
            member = self._claim(keys=[self.due_key], args=[repr(time.time()), claim_s])
            if not member:
                break
            self._attempt(member)
            done += 1
        return done

    def _attempt(self, member: str) -> None:
        delivery = json.loads(member)
        job_id, event, attempt = delivery["job_id"], delivery["event"], delivery["attempt"]
        job = self.jobs.get(job_id)
        url = job.params.get("webhook_url") if job else None
        self.redis.zrem(self.due_key, member)
        if not url:
            return
        outcome = self._post(url, event, job)
        self._record(job_id, {"event": event, "attempt": attempt, "at": time.time(), **outcome})
        if not outcome["ok"] and attempt < self.config.max_attempts:
            delay = self.config.backoff_s * 2 ** (attempt - 1)
            retry = json.dumps({**delivery, "attempt": attempt + 1})
            self.redis.zadd(self.due_key, {retry: time.time() + delay})

    def _post(self, url: str, event: str, job: Job) -> dict[str, Any]:
        body = json.dumps({"type": event, "job": self._summary(job)}, separators=(",", ":")).encode()
        stamp = int(time.time())
        secret = self.secret_for(job.key_id or "local")
        headers = {"Content-Type": "application/json", "Kiln-Event": event, "Kiln-Timestamp": str(stamp),
                   "Kiln-Delivery": f"{job.id}:{event}", "Kiln-Signature": f"t={stamp},v1={sign(secret, stamp, body)}"}
        policy = safehttp.Policy(timeout_s=self.config.timeout_s, max_bytes=64 * 1024, max_redirects=0,
                                 allow_private=self.config.allow_private)
        started = time.monotonic()
        try:
            reply = safehttp.request("POST", url, policy, body=body, headers=headers)
        except InputRefused as exc:
            return {"ok": False, "error": exc.message, "duration_s": round(time.monotonic() - started, 3)}
        ok = 200 <= reply.status < 300
        return {"ok": ok, "status_code": reply.status, "duration_s": round(time.monotonic() - started, 3)}

    def _summary(self, job: Job) -> dict[str, Any]:
        url = f"{self.config.public_url.rstrip('/')}/v1/jobs/{job.id}"
        return {"id": job.id, "status": job.status.value, "model": job.model, "error": job.error,
                "outputs": [{"index": o.index, "url": f"{url}/outputs/{o.index}"} for o in job.outputs],
                "url": url}

    def _record(self, job_id: str, attempt: dict[str, Any]) -> None:
        key = self.names.webhook_log(job_id)
        pipe = self.redis.pipeline()
        pipe.rpush(key, json.dumps(attempt))
        pipe.expire(key, self.config.retention_s)
        pipe.execute()
        level = logging.INFO if attempt["ok"] else logging.WARNING
        logger.log(level, "webhook %s for %s attempt %d: %s", attempt["event"], job_id, attempt["attempt"],
                   attempt.get("status_code") or attempt.get("error"))
