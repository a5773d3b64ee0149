"""The jobs table (filters, search, sort, cursor paging, bulk cancel), one job's page, its live
progress as JSON, its outputs, and the cancel and retry actions."""

from __future__ import annotations

import datetime as dt
import json
import shlex

from flask import (
    abort,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from api.admin.retry import retry_job
from api.admin.session import page
from api.services import kiln
from api.stored import serve_stored
from shared.ids import is_job_id
from shared.jobs.query import JobQuery, decode_cursor, find_jobs
from shared.jobs.params import request_body
from shared.jobs.record import Job, Status

STATUSES = [s.value for s in Status]
RANGES = {"": None, "1h": 3600, "24h": 86400, "7d": 7 * 86400}
PAGE_SIZES = (25, 50, 100)


def read_filter(args) -> JobQuery:
    """The table's filter from the query string; bad values are refused with a 400 naming them."""
    status = args.get("status") or None
    if status is not None and status not in STATUSES:
        abort(400, f"status must be one of {STATUSES} (got {status!r})")
    if args.get("range", "") not in RANGES:
        abort(400, f"range must be one of {sorted(RANGES)} (got {args.get('range')!r})")
    order = args.get("order", "desc")
    if order not in ("desc", "asc"):
        abort(400, f"order must be desc or asc (got {order!r})")
    cursor = decode_cursor(args["cursor"]) if args.get("cursor") else None
    if args.get("cursor") and cursor is None:
        abort(400, "cursor is not one this page made")
    raw = args.get("limit", "50")
    limit = int(raw) if raw.isascii() and raw.isdigit() else 50  # '²'.isdigit() is true, int('²') fails
    window = RANGES[args.get("range", "")]
    return JobQuery(status=status, model=args.get("model") or None, owner=args.get("owner") or None,
                    text=(args.get("q") or "").strip()[:200] or None,
                    since=(dt.datetime.now(dt.timezone.utc).timestamp() - window) if window else None,
                    order=order, cursor=cursor, limit=limit if limit in PAGE_SIZES else 50)


@page("/jobs")
def jobs():
    filt = read_filter(request.args)
    services = kiln()
    result = find_jobs(services.store, filt)
    args = {k: v for k, v in request.args.items() if k != "cursor" and v}
    return render_template("admin/jobs.html", page=result, filt=filt, args=args, statuses=STATUSES,
                           models=services.catalog.names(), ranges=list(RANGES),
                           total=services.store.count(Status(filt.status) if filt.status else None))


@page("/jobs/live")
def jobs_live():
    """Status and progress of up to 100 jobs (`?id=…&id=…`), for the pages' live refresh."""
    store = kiln().store
    ids = [i for i in request.args.getlist("id")[:100] if is_job_id(i)]
    found = [store.get(i) for i in ids]
    return jsonify({"jobs": [live_row(job) for job in found if job is not None]})


def live_row(job: Job) -> dict:
    return {"id": job.id, "status": job.status.value, "terminal": job.status.terminal,
            "step": job.progress_step, "total": job.progress_total,
            "worker": job.worker, "attempts": job.attempts, "cancel_requested": job.cancel_requested}


@page("/jobs/cancel", methods=("POST",))
def jobs_cancel():
    """Bulk cancel: every selected job that is still queued (others are left alone and counted)."""
    store = kiln().store
    canceled = skipped = 0
    for job_id in request.form.getlist("job_id")[:500]:
        job = store.get(job_id) if is_job_id(job_id) else None
        if job is None or job.status != Status.QUEUED:
            skipped += 1
            continue
        canceled += store.cancel(job_id) == "canceled"
    flash(f"Canceled {canceled} queued job(s)" + (f"; {skipped} not queued, left alone." if skipped else "."))
    return redirect(request.form.get("back") if (request.form.get("back") or "").startswith("/admin/jobs")
                    else url_for("admin.jobs"))


def load(job_id: str) -> Job:
    job = kiln().store.get(job_id) if is_job_id(job_id) else None
    if job is None:
        abort(404, f"no job {job_id!r}")
    return job


@page("/jobs/<job_id>")
def job(job_id: str):
    record = load(job_id)
    return render_template("admin/job.html", job=record, key_id=record.key_id, timeline=timeline(record),
                           params_json=json.dumps(record.params, indent=2, sort_keys=True),
                           curl=as_curl(record))


@page("/jobs/<job_id>/cancel", methods=("POST",))
def job_cancel(job_id: str):
    load(job_id)
    answer = kiln().store.cancel(job_id)
    flash({"canceled": "Job canceled.", "requested": "Cancel requested: the worker stops at the next step."}
          .get(answer, f"The job has already {answer}; nothing to cancel."))
    return redirect(url_for("admin.job", job_id=job_id))


@page("/jobs/<job_id>/retry", methods=("POST",))
def job_retry(job_id: str):
    new = retry_job(kiln(), load(job_id))
    flash(f"Retried as a new job {new.id}.")
    return redirect(url_for("admin.job", job_id=new.id))


@page("/jobs/<job_id>/outputs/<int:index>")
def job_output(job_id: str, index: int):
    record = load(job_id)
    output = next((o for o in record.outputs if o.index == index), None)
    if output is None:
        abort(404, f"job {job_id} has no output {index}")
    return serve_stored(output.key, output.content_type, f"output {index} of job {job_id}", "private, max-age=3600")


@page("/jobs/<job_id>/preview")
def job_preview(job_id: str):
    record = load(job_id)
    if not record.preview_key:
        abort(404, f"job {job_id} has no preview")
    return serve_stored(record.preview_key, "image/png", f"the preview of job {job_id}", "no-store")


def timeline(job: Job) -> list[dict]:
    """Queued → (earlier attempts) → started → finished, each with the time since the previous.

    The record keeps the last start only; earlier attempts (a lost worker's) show as one step
    with their count.
    """
    steps = [("queued", job.created_at, f"on {job.queue}")]
    if job.attempts > 1:
        steps.append(("retried", None, f"{job.attempts - 1} earlier attempt(s) lost their worker; requeued"))
    if job.started_at:
        steps.append((f"started (attempt {job.attempts})", job.started_at, f"on {job.worker or '?'}"))
    if job.finished_at:
        steps.append((job.status.value, job.finished_at, (job.error or {}).get("code", "")))
    out, previous = [], None
    for name, at, note in steps:
        out.append({"name": name, "at": at, "note": note,
                    "after_s": (at - previous) if at is not None and previous is not None else None})
        previous = at if at is not None else previous
    return out


def as_curl(job: Job) -> str:
    """The same request as a `curl` command (input images and the seed included as stored)."""
    body = request_body(job.params)
    base = kiln().settings.public_url.rstrip("/")
    return (f'curl -X POST {base}/v1/jobs -H "Authorization: Bearer $KILN_API_KEY" '
            f"-H 'Content-Type: application/json' -d {shlex.quote(json.dumps(body, sort_keys=True))}")
