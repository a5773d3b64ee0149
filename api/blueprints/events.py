"""`GET /v1/jobs/<id>/events`: the job's status changes and progress as Server-Sent Events.

The stream starts with a `status` event holding the whole job, then relays what the job store
publishes (`status`, `progress`, `preview`, `phase`) and ends with a final `status` event once
the job is terminal. Comment lines (`: keepalive`) go out every `sse_heartbeat_s` so proxies keep
the connection; a stream lives at most `sse_max_lifetime_s` (clients reconnect).

Cost and limits: the API runs on gevent (`api.gunicorn_worker`), so an idle stream is a greenlet,
a socket and a queue fed by the process's single Redis subscription (`api.eventhub`). A process
holds at most `sse_max_streams` streams (beyond: 503 with `Retry-After`; the worker keeps
`api_max_requests` more connections for everything else) and a key at most
`sse_max_streams_per_key` over all processes (beyond: 429). Every `sse_key_recheck_s` the stream
re-checks its key: a revoked key's stream ends with an `error` event.
"""

from __future__ import annotations

import json
import queue
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from flask import Blueprint, Response, stream_with_context, url_for

from api.services import Services, kiln
from api.auth import principal
from api.blueprints.jobs import job_json, load_job
from shared.ratelimit import Overloaded

bp = Blueprint("events", __name__, url_prefix="/v1/jobs")
RECHECK_S = 5.0  # re-read the record this often, in case a published event was missed


def _event(kind: str, data: dict, event_id: int) -> str:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@dataclass
class _Stream:
    """One open stream: who holds it and what it has sent."""

    services: Services
    job_id: str
    key_id: str
    stream_id: str
    inbox: queue.Queue
    status: str = ""
    event_id: int = 1
    times: dict[str, float] = field(default_factory=dict)

    def next_id(self) -> int:
        self.event_id += 1
        return self.event_id - 1


@bp.get("/<job_id>/events")
def events(job_id: str):
    load_job(job_id)
    services, who = kiln(), principal()
    stream_id = secrets.token_hex(8)
    services.stream_slots.open(who.key_id, stream_id)  # 429 at the key's cap
    if not services.streams.acquire(blocking=False):
        services.stream_slots.close(who.key_id, stream_id)
        raise Overloaded("too many open event streams on this server; retry shortly", retry_after=5,
                         code="too_many_streams")
    stream = _Stream(services, job_id, who.key_id, stream_id, services.events.watch(job_id))
    response = Response(stream_with_context(_run(stream)), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response.call_on_close(lambda: _close(stream))  # the server closes every response, even unread
    return response


def _close(stream: _Stream) -> None:
    services = stream.services
    services.events.unwatch(stream.job_id, stream.inbox)
    services.streams.release()
    try:
        services.stream_slots.close(stream.key_id, stream.stream_id)
    except Exception:  # Redis gone: the slot expires on its own
        pass


def _run(stream: _Stream) -> Iterator[str]:
    yield "retry: 2000\n\n"
    job = load_job(stream.job_id)
    stream.status = job.status.value
    yield _event("status", job_json(job), 0)
    if not job.status.terminal:
        yield from _relay(stream)


def _relay(stream: _Stream) -> Iterator[str]:
    settings = stream.services.settings
    now = time.monotonic()
    stream.times = {"start": now, "beat": now, "record": now, "key": now}
    while now - stream.times["start"] < settings.sse_max_lifetime_s:
        try:
            data = stream.inbox.get(timeout=min(settings.sse_heartbeat_s, settings.sse_key_recheck_s, RECHECK_S))
        except queue.Empty:
            data = {}
        if text := _relayed(stream, data):
            yield text
        now = time.monotonic()
        if data.get("type") == "status" or now - stream.times["record"] >= RECHECK_S:
            stream.times["record"] = now
            text, ended = _recheck_record(stream, force=data.get("type") == "status")
            if text:
                yield text
            if ended:
                return
        if now - stream.times["key"] >= settings.sse_key_recheck_s:
            stream.times["key"] = now
            if not _key_still_valid(stream):
                yield _event("error", {"code": "key_revoked", "message": "the API key was revoked"},
                             stream.next_id())
                return
        if now - stream.times["beat"] >= settings.sse_heartbeat_s:
            stream.times["beat"] = now
            yield ": keepalive\n\n"
    yield _event("timeout", {"message": "stream lifetime reached; reconnect to continue"}, stream.next_id())


def _relayed(stream: _Stream, data: dict) -> str:
    """The SSE text for a progress, preview or phase message ('' for anything else)."""
    kind = data.get("type")
    if kind == "progress":
        return _event("progress", {"step": data["step"], "total": data["total"]}, stream.next_id())
    if kind in ("preview", "phase"):
        payload = {k: v for k, v in data.items() if k not in ("type", "job_id")}
        if kind == "preview":
            payload["url"] = url_for("jobs.get_preview", job_id=stream.job_id, _external=True)
        return _event(kind, payload, stream.next_id())
    return ""


def _recheck_record(stream: _Stream, force: bool) -> tuple[str, bool]:
    """A `status` event if the job's status changed (or a status message came); and whether it ended."""
    job = load_job(stream.job_id)
    text = ""
    if job.status.value != stream.status or force:
        stream.status = job.status.value
        text = _event("status", job_json(job), stream.next_id())
    return text, job.status.terminal


def _key_still_valid(stream: _Stream) -> bool:
    keys = stream.services.keys
    if not keys.is_active(stream.key_id):
        return False
    stream.services.stream_slots.refresh(stream.key_id, stream.stream_id)
    return True
