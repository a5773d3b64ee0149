"""Dashboard queries over the job indexes: filtered, searchable, sortable cursor pages and the
overview's numbers — all bounded, so they cost the same with 100 jobs or 100 000.

Paging reads one sorted-set index (the owner's when filtered by owner, else the status's, else
all jobs), scored by creation time, from a cursor `(score, id)` in either direction, and applies
the remaining filters (model, text in the prompt) to at most `max_scan` records per page. A page
that filled before the window ran out, or a window that ran out before the page filled, both end
with a cursor: "keep going". Text search is therefore a bounded scan of the next window, not a
full-text index.

The overview counts with ZCARD/ZCOUNT on the indexes (exact) and computes latencies and
throughput from a sample of the most recent finished jobs (bounded, `SAMPLE` records).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Literal

from shared.jobs.record import Job, Status
from shared.jobs.store import JobStore, encode_cursor

Order = Literal["desc", "asc"]
SAMPLE = 500  # recent finished jobs read for latency and throughput figures
HOUR, DAY = 3600.0, 86400.0


@dataclass(frozen=True)
class JobFilter:
    """What the dashboard's job table shows."""

    status: str | None = None
    model: str | None = None
    owner: str | None = None
    text: str | None = None
    since: float | None = None
    until: float | None = None
    order: Order = "desc"
    cursor: tuple[float, str] | None = None
    limit: int = 50
    max_scan: int = 1000

    def matches(self, job: Job) -> bool:
        return ((self.status is None or job.status.value == self.status)
                and (self.model is None or job.model == self.model)
                and (self.owner is None or job.owner == self.owner)
                and (not self.text or self.text.lower() in (job.params.get("prompt") or "").lower()))


@dataclass(frozen=True)
class Page:
    jobs: list[Job]
    next_cursor: str | None
    scanned: int


def index_key(store: JobStore, filt: JobFilter) -> str:
    if filt.owner:
        return f"{store.prefix}:jobs:owner:{filt.owner}"
    if filt.status:
        return f"{store.prefix}:jobs:status:{filt.status}"
    return f"{store.prefix}:jobs:all"


def _window(store: JobStore, filt: JobFilter) -> list[tuple[str, float]]:
    """Up to `max_scan + 1` index entries after the cursor, in the filter's order.

    The cursor's score is an inclusive bound (several jobs may share a creation time), so the
    read asks for as many extra entries as share that score, then drops those at or before it.
    """
    key = index_key(store, filt)
    low = "-inf" if filt.since is None else filt.since
    high = "+inf" if filt.until is None else filt.until
    extra = store.redis.zcount(key, filt.cursor[0], filt.cursor[0]) if filt.cursor else 0
    num = filt.max_scan + 1 + extra
    if filt.order == "desc":
        top = filt.cursor[0] if filt.cursor else high
        entries = store.redis.zrevrangebyscore(key, top, low, start=0, num=num, withscores=True)
        if filt.cursor:  # equal scores come in reverse id order: keep only ids past the cursor's
            entries = [(i, s) for i, s in entries if s < filt.cursor[0] or i < filt.cursor[1]]
    else:
        bottom = filt.cursor[0] if filt.cursor else low
        entries = store.redis.zrangebyscore(key, bottom, high, start=0, num=num, withscores=True)
        if filt.cursor:
            entries = [(i, s) for i, s in entries if s > filt.cursor[0] or i > filt.cursor[1]]
    return entries[:filt.max_scan + 1]


def find_jobs(store: JobStore, filt: JobFilter) -> Page:
    """One page of jobs matching `filt`, reading at most `filt.max_scan` records."""
    entries = _window(store, filt)
    window = entries[:filt.max_scan]
    jobs: list[Job] = []
    consumed = 0
    for start in range(0, len(window), 200):  # read records in chunks: stop early once full
        chunk = window[start:start + 200]
        for (job_id, _), raw in zip(chunk, _records(store, [i for i, _ in chunk])):
            if len(jobs) == filt.limit:
                break
            consumed += 1
            job = Job.from_hash(raw) if raw else None
            if job is not None and filt.matches(job):
                jobs.append(job)
        if len(jobs) == filt.limit:
            break
    if consumed == 0 or consumed == len(entries):
        return Page(jobs, None, consumed)
    job_id, score = entries[consumed - 1]
    return Page(jobs, encode_cursor(score, job_id), consumed)


def _records(store: JobStore, ids: list[str]) -> list[dict[str, str]]:
    pipe = store.redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.hgetall(store.job_key(job_id))
    return pipe.execute() if ids else []


# Overview -------------------------------------------------------------------------------------
@dataclass
class Overview:
    now: dict[str, int]
    last_hour: dict[str, int]
    last_day: dict[str, int]
    hourly_created: list[int]          # jobs created per hour, the last 24 hours, oldest first
    hourly_failed: list[int]
    minute_images: list[int]           # images finished per minute, the last 60 minutes (sampled)
    images_per_min: float
    queue_wait: dict[str, float | None]
    run_time: dict[str, float | None]
    failure_rate_hour: float | None
    sample_size: int
    queues: list[dict] = field(default_factory=list)


def _counts(store: JobStore, since: float | None) -> dict[str, int]:
    pipe = store.redis.pipeline(transaction=False)
    for status in Status:
        key = f"{store.prefix}:jobs:status:{status.value}"
        pipe.zcount(key, since, "+inf") if since is not None else pipe.zcard(key)
    return dict(zip((s.value for s in Status), pipe.execute()))


def _hourly(store: JobStore, key: str, now: float, hours: int = 24) -> list[int]:
    pipe = store.redis.pipeline(transaction=False)
    for h in range(hours, 0, -1):
        pipe.zcount(key, now - h * HOUR, f"({now - (h - 1) * HOUR}")
    return pipe.execute()


def recent_finished(store: JobStore, limit: int = SAMPLE) -> list[dict]:
    """The most recently created succeeded and failed jobs' timing fields (raw, bounded)."""
    ids = []
    for status in (Status.SUCCEEDED, Status.FAILED):
        ids += store.redis.zrevrange(f"{store.prefix}:jobs:status:{status.value}", 0, limit - 1)
    fields = ("status", "finished_at", "timings", "outputs")
    pipe = store.redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(store.job_key(job_id), fields)
    return [dict(zip(fields, row)) for row in (pipe.execute() if ids else []) if row[0]]


def percentiles(values: list[float]) -> dict[str, float | None]:
    """Median and 95th percentile (nearest rank on the sorted values), None when empty."""
    if not values:
        return {"p50": None, "p95": None}
    ordered = sorted(values)
    rank = max(0, math.ceil(0.95 * len(ordered)) - 1)  # nearest rank
    return {"p50": statistics.median(ordered), "p95": ordered[rank]}


def _minute_images(rows: list[dict], now: float) -> list[int]:
    minutes = [0] * 60
    for row in rows:
        finished = float(row["finished_at"] or 0)
        age = int((now - finished) // 60)
        if row["status"] == "succeeded" and 0 <= age < 60:
            minutes[59 - age] += len(json.loads(row["outputs"] or "[]"))
    return minutes


def overview(store: JobStore, queue_names: list[str], now: float | None = None) -> Overview:
    """The dashboard's front page numbers (see the module docstring for what is exact)."""
    now = time.time() if now is None else now
    rows = recent_finished(store)
    timings = [json.loads(r["timings"] or "{}") for r in rows]
    last_hour = _counts(store, now - HOUR)
    finished_hour = last_hour["succeeded"] + last_hour["failed"]
    minutes = _minute_images(rows, now)
    return Overview(
        now=_counts(store, None), last_hour=last_hour, last_day=_counts(store, now - DAY),
        hourly_created=_hourly(store, f"{store.prefix}:jobs:all", now),
        hourly_failed=_hourly(store, f"{store.prefix}:jobs:status:failed", now),
        minute_images=minutes, images_per_min=round(sum(minutes[-10:]) / 10, 2),
        queue_wait=percentiles([t["queue_wait_s"] for t in timings if "queue_wait_s" in t]),
        run_time=percentiles([t["total_s"] for t in timings if "total_s" in t]),
        failure_rate_hour=(last_hour["failed"] / finished_hour) if finished_hour else None,
        sample_size=len(rows), queues=queue_depths(store, queue_names))


def queue_depths(store: JobStore, queue_names: list[str]) -> list[dict]:
    """Per Celery queue: messages in the broker list (`LLEN`) and jobs waiting in fair dispatch."""
    client, prefix = store.redis, store.prefix
    rows = []
    for name in sorted(set(queue_names) | set(client.smembers(f"{prefix}:fair:queues"))):
        ring = client.lrange(f"{prefix}:fair:{name}:ring", 0, -1)
        waiting = sum(client.llen(f"{prefix}:fair:{name}:wait:{key}") for key in ring)
        rows.append({"name": name, "broker": client.llen(name), "waiting": waiting})
    return rows
