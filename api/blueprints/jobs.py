"""Jobs: submit, list, read, fetch outputs, cancel. A user reaches only its own jobs; another
owner's job answers 404, exactly like a job that does not exist."""

from __future__ import annotations

import datetime as dt
import logging

from flask import Blueprint, jsonify, request, url_for

from api.services import kiln
from api.auth import principal
from api.schemas import JobList, JobView, dump
from api.stored import serve_stored
from api.submit import submit as submit_job
from shared.errors import Conflict, NotFound, ValidationFailed
from shared.ids import is_job_id
from shared.jobs.params import public_view
from shared.jobs.record import Job, Status
from shared.jobs.query import JobQuery, decode_cursor, find_jobs

logger = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")
STATUSES = [s.value for s in Status]
LIST_MAX_SCAN = 500  # index entries one listing page reads at most


@bp.post("")
def submit():
    job, created = submit_job(kiln(), principal(), request.headers.get("Idempotency-Key"))
    response = jsonify(job_json(job))
    response.status_code = 202 if created else 200
    response.headers["Location"] = url_for("jobs.get_job", job_id=job.id)
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@bp.get("")
def list_jobs():
    page = find_jobs(kiln().store, _job_query())
    return jsonify(dump(JobList, {"jobs": [job_json(job) for job in page.jobs], "next_cursor": page.next_cursor}))


@bp.get("/<job_id>")
def get_job(job_id: str):
    return jsonify(job_json(load_job(job_id)))


@bp.post("/<job_id>/cancel")
def cancel(job_id: str):
    load_job(job_id)
    answer = kiln().store.cancel(job_id)
    if answer in (Status.SUCCEEDED.value, Status.FAILED.value):
        raise Conflict(f"job {job_id} has already {answer}; it cannot be canceled", code="already_finished")
    job = load_job(job_id)
    return jsonify(job_json(job)), 202 if answer == "requested" else 200


@bp.get("/<job_id>/outputs/<int:index>")
def get_output(job_id: str, index: int):
    job = load_job(job_id)
    output = next((o for o in job.outputs if o.index == index), None)
    if output is None:
        raise NotFound(f"job {job_id} has no output {index}", field="index")
    return serve_stored(output.key, output.content_type, f"output {index} of job {job_id}",
                  "private, max-age=86400, immutable")


@bp.get("/<job_id>/preview")
def get_preview(job_id: str):
    """The running job's latest preview (with `preview_every`); it changes as the job runs."""
    job = load_job(job_id)
    if not job.preview_key:
        raise NotFound(f"job {job_id} has no preview (submit it with preview_every)", field="job_id")
    return serve_stored(job.preview_key, "image/png", f"the preview of job {job_id}", "no-store")


def load_job(job_id: str) -> Job:
    """The job, if the caller may see it (its owner, or an admin); else 404."""
    job = kiln().store.get(job_id) if is_job_id(job_id) else None
    who = principal()
    if job is None or (job.owner != who.owner and not who.is_admin):
        raise NotFound(f"no job {job_id!r}", field="job_id")
    return job


def _job_query() -> JobQuery:
    args, who = request.args, principal()
    status = args.get("status")
    if status is not None and status not in STATUSES:
        raise ValidationFailed(f"status must be one of {STATUSES} (got {status!r})", field="status")
    owner = args.get("owner") if who.is_admin else who.owner
    if owner is not None and not 1 <= len(owner) <= 64:
        raise ValidationFailed("owner must be 1-64 characters", field="owner")
    cursor = None
    if args.get("cursor"):
        cursor = decode_cursor(args["cursor"])
        if cursor is None:
            raise ValidationFailed("cursor is not one this API returned", field="cursor")
    return JobQuery(owner=owner, status=status, model=args.get("model") or None,
                    since=_time_arg("created_after"), until=_time_arg("created_before"),
                    cursor=cursor, limit=_int_arg("limit", 20, 1, 100), max_scan=LIST_MAX_SCAN)


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:  # '²'.isdigit() is true
        raise ValidationFailed(f"{name} must be an integer from {low} to {high} (got {raw!r})", field=name)
    return int(raw)


def _time_arg(name: str) -> float | None:
    """An ISO 8601 time (`2026-01-31T12:00:00Z`) or Unix seconds, as Unix seconds."""
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            parsed = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationFailed(f"{name} must be an ISO 8601 time or Unix seconds (got {raw!r})",
                                   field=name) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.timezone.utc)
        value = parsed.timestamp()
    if not 0 <= value < 1e11:
        raise ValidationFailed(f"{name} is out of range (got {raw!r})", field=name)
    return value


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds")


def job_json(job: Job) -> dict:
    total = job.progress_total
    url = job.params.get("webhook_url")
    webhook = {"url": url, "attempts": kiln().webhooks.attempts(job.id)} if url else None
    return dump(JobView, {
        "id": job.id,
        "status": job.status.value,
        "phase": job.phase if job.status is Status.RUNNING else None,
        "preview": {"step": job.preview_step,
                    "url": url_for("jobs.get_preview", job_id=job.id, _external=True)} if job.preview_key else None,
        "model": job.model,
        "params": public_view(job.params),
        "progress": {"step": job.progress_step, "total": total,
                     "fraction": round(job.progress_step / total, 4) if total else 0.0},
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "attempts": job.attempts,
        "worker": job.worker,
        "cancel_requested": job.cancel_requested,
        "error": job.error,
        "timings": job.timings,
        "outputs": [
            {"index": o.index, "url": url_for("jobs.get_output", job_id=job.id, index=o.index, _external=True),
             "content_type": o.content_type, "width": o.width, "height": o.height, "seed": o.seed,
             "size": o.size}
            for o in job.outputs
        ],
        "url": url_for("jobs.get_job", job_id=job.id, _external=True),
        "webhook": webhook,
    })
