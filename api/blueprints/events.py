"""`GET /v1/jobs/<id>/events`: the job's status changes and progress as Server-Sent Events.

The stream starts with a `status` event holding the whole job, then relays what the job store
publishes (`status`, `progress`) and ends with a final `status` event once the job is terminal.
Comment lines (`: keepalive`) go out every `sse_heartbeat_s` so proxies keep the connection;
a stream lives at most `sse_max_lifetime_s` (clients reconnect). Each stream holds one server
thread (gunicorn gthread), so a process serves at most `sse_max_streams` at once and answers
503 beyond that rather than starving ordinary requests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from flask import Blueprint, Response, stream_with_context, url_for

from api.app import Services, kiln
from api.blueprints.jobs import job_json, load_job
from shared.errors import ServiceUnavailable

bp = Blueprint("events", __name__, url_prefix="/v1/jobs")
RECHECK_S = 2.0  # re-read the record this often: a published event can be missed (pub/sub)


def _event(kind: str, data: dict, event_id: int) -> str:
    return f"id: {event_id}\nevent: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


@bp.get("/<job_id>/events")
def events(job_id: str):
    load_job(job_id)
    services = kiln()
    if not services.streams.acquire(blocking=False):
        raise ServiceUnavailable("too many open event streams on this server; retry shortly",
                                 code="too_many_streams")
    try:
        pubsub = services.store.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(services.store.events_channel(job_id))
    except Exception:
        services.streams.release()
        raise
    stream = stream_with_context(_stream(services, pubsub, job_id))
    response = Response(stream, mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _close() -> None:  # the server closes every response, even one never iterated
        pubsub.close()
        services.streams.release()
    response.call_on_close(_close)
    return response


def _stream(services: Services, pubsub, job_id: str) -> Iterator[str]:
    yield "retry: 2000\n\n"
    job = load_job(job_id)
    yield _event("status", job_json(job), 0)
    if not job.status.terminal:
        yield from _relay(services, pubsub, job_id, job.status.value)


def _relay(services: Services, pubsub, job_id: str, status: str) -> Iterator[str]:
    settings = services.settings
    start = last_beat = last_check = time.monotonic()
    event_id = 1
    while time.monotonic() - start < settings.sse_max_lifetime_s:
        message = pubsub.get_message(timeout=min(1.0, settings.sse_heartbeat_s))
        data = json.loads(message["data"]) if message and message.get("type") == "message" else {}
        if data.get("type") == "progress":
            yield _event("progress", {"step": data["step"], "total": data["total"]}, event_id)
            event_id += 1
        elif data.get("type") in ("preview", "phase"):
            payload = {k: v for k, v in data.items() if k not in ("type", "job_id")}
            if data["type"] == "preview":
                payload["url"] = url_for("jobs.get_preview", job_id=job_id, _external=True)
            yield _event(data["type"], payload, event_id)
            event_id += 1
        now = time.monotonic()
        if data.get("type") == "status" or now - last_check >= RECHECK_S:
            last_check = now
            job = load_job(job_id)
            if job.status.value != status or data.get("type") == "status":
                status = job.status.value
                yield _event("status", job_json(job), event_id)
                event_id += 1
            if job.status.terminal:
                return
        if now - last_beat >= settings.sse_heartbeat_s:
            last_beat = now
            yield ": keepalive\n\n"
    yield _event("timeout", {"message": "stream lifetime reached; reconnect to continue"}, event_id)
