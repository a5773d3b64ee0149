"""Queries over the job indexes: the one job listing (the API's `GET /v1/jobs` and the
dashboard's jobs table) and the dashboard overview's numbers — all bounded, so they cost the
same with 100 jobs or 100 000.

Paging reads one sorted-set index (the owner's when filtered by owner, else the status's, else
all jobs), scored by creation time, from a cursor `(score, id)` in either direction, and applies
the remaining filters (status, model, owner, text in the prompt) to at most `max_scan` records
per page. A page that filled before the window ran out, or a window that ran out before the page
filled, both end with a cursor: "keep going". Text search is therefore a bounded scan of the next
window, not a full-text index.

Ties: many jobs may share one creation time. Within one score Redis orders members by id, so the
cursor's id says where in the tie the last page stopped; the next read starts at the cursor's
score, reads as many extra entries as share it, and drops those at or before the cursor.

The overview counts with ZCARD/ZCOUNT on the indexes (exact) and computes latencies and
throughput from a sample of the most recent finished jobs (bounded, `SAMPLE` records).
"""

from __future__ import annotations

import base64
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Literal

from shared.jobs.record import Job, Status
from shared.jobs.store import JobStore

Order = Literal["desc", "asc"]
SAMPLE = 500  # recent finished jobs read for latency and throughput figures
CHUNK = 200  # records read per round trip while a page fills
HOUR, DAY = 3600.0, 86400.0


@dataclass(frozen=True)
class JobQuery:
    """One page of the job listing: filters, order, an optional cursor `(score, id)`, a size."""

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


def encode_cursor(score: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(f"{score!r} {job_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str] | None:
    """The `(score, job id)` in a cursor, or None when it is not one of ours."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        score, job_id = text.split(" ", 1)
        return (float(score), job_id) if math.isfinite(float(score)) else None
    except (ValueError, UnicodeDecodeError):
        return None


def _window(store: JobStore, query: JobQuery) -> list[tuple[str, float]]:
    """Up to `max_scan + 1` index entries after the cursor, in the query's order.

    The cursor's score is an inclusive bound (several jobs may share a creation time), so the
    read asks for as many extra entries as share that score, then drops those at or before it.
    """
    key = store.index_key(query.status, query.owner)
    low = "-inf" if query.since is None else query.since
    high = "+inf" if query.until is None else query.until
    extra = store.redis.zcount(key, query.cursor[0], query.cursor[0]) if query.cursor else 0
    num = query.max_scan + 1 + extra
    if query.order == "desc":
        top = query.cursor[0] if query.cursor else high
        entries = store.redis.zrevrangebyscore(key, top, low, start=0, num=num, withscores=True)
        if query.cursor:  # equal scores come in reverse id order: keep only ids past the cursor's
            entries = [(i, s) for i, s in entries if s < query.cursor[0] or i < query.cursor[1]]
    else:
        bottom = query.cursor[0] if query.cursor else low
        entries = store.redis.zrangebyscore(key, bottom, high, start=0, num=num, withscores=True)
        if query.cursor:
            entries = [(i, s) for i, s in entries if s > query.cursor[0] or i > query.cursor[1]]
    return entries[:query.max_scan + 1]


def find_jobs(store: JobStore, query: JobQuery) -> Page:
    """One page of jobs matching `query`, reading at most `query.max_scan` records."""
    entries = _window(store, query)
    window = entries[:query.max_scan]
    jobs: list[Job] = []
    consumed = 0
    for start in range(0, len(window), CHUNK):  # read records in chunks: stop early once full
        chunk = window[start:start + CHUNK]
        for job in store.many([i for i, _ in chunk]):
            if len(jobs) == query.limit:
                break
            consumed += 1
            if job is not None and query.matches(job):
                jobs.append(job)
        if len(jobs) == query.limit:
            break
    # Done only when every entry in range was read (the window holds one entry past max_scan).
    if consumed == 0 or consumed == len(entries):
        return Page(jobs, None, consumed)
    job_id, score = entries[consumed - 1]
    return Page(jobs, encode_cursor(score, job_id), consumed)


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
        key = store.index_key(status)
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
        ids += store.ids(status, limit=limit)
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
        hourly_created=_hourly(store, store.index_key(), now),
        hourly_failed=_hourly(store, store.index_key(Status.FAILED), now),
        minute_images=minutes, images_per_min=round(sum(minutes[-10:]) / 10, 2),
        queue_wait=percentiles([t["queue_wait_s"] for t in timings if "queue_wait_s" in t]),
        run_time=percentiles([t["total_s"] for t in timings if "total_s" in t]),
        failure_rate_hour=(last_hour["failed"] / finished_hour) if finished_hour else None,
        sample_size=len(rows), queues=queue_depths(store, queue_names))


def queue_depths(store: JobStore, queue_names: list[str]) -> list[dict]:
    """Per Celery queue: messages in the broker list (`LLEN`) and jobs waiting in fair dispatch."""
    client, names = store.redis, store.names
    rows = []
    for name in sorted(set(queue_names) | set(client.smembers(names.fair_queues))):
        ring = client.lrange(names.fair_ring(name), 0, -1)
        waiting = sum(client.llen(names.fair_wait(name, key)) for key in ring)
        rows.append({"name": name, "broker": client.llen(name), "waiting": waiting})
    return rows
