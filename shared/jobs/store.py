"""The job store: job records, their indexes, leases and events, in Redis.

Every state change runs as one Lua script (`shared.jobs.scripts`), so concurrent API processes,
workers and reapers never see or make a half-done transition.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Iterable

import redis

from shared.jobs import scripts
from shared.jobs.record import Job, Output, Status
from shared.redis_keys import DEFAULT_PREFIX, RedisKeys


@dataclass(frozen=True)
class StartResult:
    """What `JobStore.start` decided: `started` means the caller now holds the lease."""

    outcome: str  # started | missing | terminal | leased | canceled | exhausted
    detail: str

    @property
    def started(self) -> bool:
        return self.outcome == "started"


class JobStore:
    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX, retention_s: int = 7 * 24 * 3600) -> None:
        self.redis = client
        self.prefix = prefix
        self.names = RedisKeys(prefix)
        self.retention_s = retention_s
        self._create = client.register_script(scripts.CREATE)
        self._start = client.register_script(scripts.START)
        self._renew = client.register_script(scripts.RENEW)
        self._progress = client.register_script(scripts.PROGRESS)
        self._finish = client.register_script(scripts.FINISH)
        self._cancel = client.register_script(scripts.CANCEL)
        self._reap = client.register_script(scripts.REAP)
        self._annotate = client.register_script(scripts.ANNOTATE)

    @classmethod
    def from_url(cls, url: str, prefix: str = DEFAULT_PREFIX, retention_s: int = 7 * 24 * 3600) -> "JobStore":
        return cls(redis.Redis.from_url(url, decode_responses=True), prefix, retention_s)

    # Keys -------------------------------------------------------------------------------------
    def job_key(self, job_id: str) -> str:
        return self.names.job(job_id)

    def lease_key(self, job_id: str) -> str:
        return self.names.lease(job_id)

    def events_channel(self, job_id: str) -> str:
        return self.names.events(job_id)

    def index_key(self, status: Status | str | None = None, owner: str | None = None) -> str:
        """The sorted set of job ids by creation time: the owner's, else the status's, else all."""
        if owner:
            return self.names.owner_index(owner)
        if status:
            return self.names.status_index(Status(status).value)
        return self.names.all_jobs

    def _call(self, script, job_id: str, *args: Any, keys: tuple[str, ...] = ()):
        all_keys = [self.job_key(job_id), self.lease_key(job_id), *keys]
        return script(keys=all_keys, args=[self.names.status_stem, job_id, repr(time.time()), *args])

    # Reads ------------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        raw = self.redis.hgetall(self.job_key(job_id))
        return Job.from_hash(raw) if raw else None

    def many(self, ids: list[str]) -> list[Job | None]:
        """The records of `ids`, in order, in one round trip (None where a record is gone)."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self.job_key(job_id))
        return [Job.from_hash(raw) if raw else None for raw in (pipe.execute() if ids else [])]

    def status(self, job_id: str) -> Status | None:
        """The job's status alone (one field read), None when the record is gone."""
        return self.statuses([job_id])[0]

    def statuses(self, ids: list[str]) -> list[Status | None]:
        """The statuses of `ids`, in order, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.job_key(job_id), "status")
        return [Status(value) if value else None for value in (pipe.execute() if ids else [])]

    def model(self, job_id: str) -> str | None:
        """The job's model name (one field read), None when the record is gone."""
        return self.redis.hget(self.job_key(job_id), "model") or None

    def count(self, status: Status | None = None) -> int:
        return self.redis.zcard(self.index_key(status))

    def ids(self, status: Status | None = None, limit: int = 50, offset: int = 0) -> list[str]:
        """Job ids, newest first, from an index (never a scan of all records)."""
        return self.redis.zrevrange(self.index_key(status), offset, offset + limit - 1)

    def lease_holder(self, job_id: str) -> str | None:
        return self.redis.get(self.lease_key(job_id))

    # Transitions ------------------------------------------------------------------------------
    def create(self, job_id: str, owner: str, params: dict[str, Any], queue: str,
               extra: dict[str, str] | None = None) -> Job:
        """Create a queued job; `extra` adds plain fields to the record (the API key id)."""
        fields = {**(extra or {}), "id": job_id, "owner": owner, "model": params["model"], "queue": queue,
                  "params": json.dumps(params, sort_keys=True)}
        created = self._call(self._create, job_id, *_flatten(fields),
                             keys=(self.names.all_jobs, self.names.owner_index(owner)))
        if not created:
            raise ValueError(f"job {job_id} exists already")
        job = self.get(job_id)
        self.publish(job_id, {"type": "status", "status": Status.QUEUED.value})
        return job

    def start(self, job_id: str, worker: str, token: str, lease_ttl_s: float, max_attempts: int) -> StartResult:
        outcome, detail = self._call(self._start, job_id, worker, token, int(lease_ttl_s * 1000), max_attempts)
        if outcome in ("started", "canceled", "exhausted"):
            status = {"started": "running", "canceled": "canceled", "exhausted": "failed"}[outcome]
            self.publish(job_id, {"type": "status", "status": status})
        return StartResult(outcome, detail)

    def renew_lease(self, job_id: str, token: str, lease_ttl_s: float) -> bool:
        return bool(self._call(self._renew, job_id, token, int(lease_ttl_s * 1000)))

    def progress(self, job_id: str, token: str, step: int, total: int) -> str:
        """Record progress; returns `ok`, `cancel` (stop at this boundary) or `gone`."""
        answer = self._call(self._progress, job_id, token, step, total)
        if answer != "gone":
            self.publish(job_id, {"type": "progress", "step": step, "total": total})
        return answer

    def annotate(self, job_id: str, token: str, event: dict[str, Any], **fields: Any) -> bool:
        """Set plain fields of a running job this token holds (`phase`, `preview_key`, …) and
        publish `event`; returns False when the job is no longer ours to annotate."""
        done = bool(self._call(self._annotate, job_id, token, *_flatten(fields)))
        if done:
            self.publish(job_id, event)
        return done

    def finish(self, job_id: str, token: str, status: Status, *, outputs: Iterable[Output] = (),
               error: dict[str, str] | None = None, timings: dict[str, float] | None = None) -> bool:
        fields: dict[str, str] = {"outputs": json.dumps([o.__dict__ for o in outputs])}
        if error:
            fields["error"] = json.dumps(error)
        if timings:
            fields["timings"] = json.dumps(timings)
        done = bool(self._call(self._finish, job_id, token, status.value, self.retention_s, *_flatten(fields)))
        if done:
            self.publish(job_id, {"type": "status", "status": status.value})
        return done

    def cancel(self, job_id: str) -> str:
        """Cancel: `canceled` (was queued), `requested` (running), a terminal status, or `missing`."""
        answer = self._call(self._cancel, job_id, self.retention_s)
        if answer == "canceled":
            self.publish(job_id, {"type": "status", "status": "canceled"})
        return answer

    def reap(self, job_id: str, max_attempts: int, grace_s: float) -> str:
        """Requeue (or fail) a running job whose lease has expired; `skip` when it is alive."""
        answer = self._call(self._reap, job_id, max_attempts, grace_s, self.retention_s)
        if answer in ("requeued", "failed", "canceled"):
            status = {"requeued": "queued"}.get(answer, answer)
            self.publish(job_id, {"type": "status", "status": status})
        return answer

    def publish(self, job_id: str, event: dict[str, Any]) -> None:
        self.redis.publish(self.events_channel(job_id), json.dumps({"job_id": job_id, **event}))

    def purge_expired_index_entries(self) -> int:
        """Drop index entries whose record has expired (retention); returns how many."""
        cutoff = time.time() - self.retention_s
        removed = 0
        for key in self.redis.scan_iter(self.names.job_indexes_pattern, count=100):
            for job_id in self.redis.zrangebyscore(key, "-inf", cutoff, start=0, num=1000):
                if not self.redis.exists(self.job_key(job_id)):
                    removed += self.redis.zrem(key, job_id)
        return removed


def _flatten(fields: dict[str, Any]) -> list[str]:
    flat: list[str] = []
    for key, value in fields.items():
        flat += [key, value if isinstance(value, str) else json.dumps(value)]
    return flat
