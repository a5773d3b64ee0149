"""Jobs: submit, read, fetch outputs, cancel."""

from __future__ import annotations

import datetime as dt
import logging

from flask import Blueprint, Response, jsonify, redirect, request, url_for

from api.app import kiln
from shared.celery_app import enqueue_job
from shared.errors import BadRequest, Conflict, NotFound, ServiceUnavailable
from shared.ids import is_job_id, new_job_id
from shared.jobs.record import Job, Status
from shared.jobs.schema import parse_request, resolve_request
from shared.storage import ObjectNotFound

logger = logging.getLogger(__name__)
bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

LOCAL_OWNER = "local"


@bp.post("")
def submit():
    body = request.get_json(silent=True)
    if body is None:
        raise BadRequest("the request body must be a JSON object (Content-Type: application/json)",
                         field="body", code="invalid_json")
    services = kiln()
    params = resolve_request(parse_request(body), services.catalog, services.settings)
    spec = services.catalog.get(params["model"])
    job_id = new_job_id()
    job = services.store.create(job_id, LOCAL_OWNER, params, spec.celery_queue)
    try:
        enqueue_job(services.celery, job_id, spec.celery_queue)
    except Exception as exc:  # broker down: the job must not linger as queued forever
        logger.exception("could not enqueue %s", job_id)
        services.store.cancel(job_id)
        raise ServiceUnavailable(f"the job queue is unavailable, nothing was run: {exc}") from None
    response = jsonify(_job_json(job))
    response.status_code = 202
    response.headers["Location"] = url_for("jobs.get_job", job_id=job_id)
    return response


@bp.get("/<job_id>")
def get_job(job_id: str):
    return jsonify(_job_json(_load(job_id)))


@bp.post("/<job_id>/cancel")
def cancel(job_id: str):
    _load(job_id)
    answer = kiln().store.cancel(job_id)
    if answer in (Status.SUCCEEDED.value, Status.FAILED.value):
        raise Conflict(f"job {job_id} has already {answer}; it cannot be canceled", code="already_finished")
    job = _load(job_id)
    return jsonify(_job_json(job)), 202 if answer == "requested" else 200


@bp.get("/<job_id>/outputs/<int:index>")
def get_output(job_id: str, index: int):
    job = _load(job_id)
    output = next((o for o in job.outputs if o.index == index), None)
    if output is None:
        raise NotFound(f"job {job_id} has no output {index}", field="index")
    services = kiln()
    url = services.storage.url(output.key, services.settings.output_url_ttl_s)
    if url:
        return redirect(url, code=302)
    try:
        data = services.storage.get(output.key)
    except ObjectNotFound:
        raise NotFound(f"output {index} of job {job_id} is no longer stored") from None
    return Response(data, mimetype=output.content_type,
                    headers={"Cache-Control": "private, max-age=86400, immutable"})


def _load(job_id: str) -> Job:
    job = kiln().store.get(job_id) if is_job_id(job_id) else None
    if job is None:
        raise NotFound(f"no job {job_id!r}", field="job_id")
    return job


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="milliseconds")


def _job_json(job: Job) -> dict:
    total = job.progress_total
    return {
        "id": job.id,
        "status": job.status.value,
        "model": job.model,
        "params": job.params,
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
    }
