"""Job submission: read the request (JSON or multipart), validate, apply idempotency and quotas,
store input images, create the record and queue it fairly."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from flask import request

from api.services import Services
from shared import safehttp
from shared.auth import Principal
from shared.errors import BadRequest, Conflict, InputRefused, ValidationFailed
from shared.idempotency import body_hash
from shared.ids import new_job_id
from shared.inputs import INPUT_KEYS, Limits, decode_base64, fetch, image_size, input_key, normalize
from shared.jobs.params import JobParams
from shared.jobs.record import Job
from shared.jobs.schema import JobRequest, parse_request, resolve_request, size_from_input
from shared.logging import current_request_id

UPLOAD_FIELDS = ("image", "mask_image")


@dataclass(frozen=True)
class Submission:
    request: JobRequest
    uploads: dict[str, bytes]
    digest: str


def read_submission(limits: Limits) -> Submission:
    """The request body as JSON, or multipart: a `request` part (JSON) plus image file parts."""
    if request.mimetype == "multipart/form-data":
        body, uploads = _multipart(limits)
    else:
        body, uploads = request.get_json(silent=True), {}
        if body is None:
            raise BadRequest("the request body must be a JSON object (Content-Type: application/json) "
                             "or multipart/form-data", field="body", code="invalid_json")
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    digest = body_hash(canonical, *(uploads.get(name, b"") for name in UPLOAD_FIELDS))
    return Submission(parse_request(body), uploads, digest)


def _multipart(limits: Limits) -> tuple[object, dict[str, bytes]]:
    unknown = sorted(set(request.files) - set(UPLOAD_FIELDS)) + sorted(set(request.form) - {"request"})
    if unknown:
        raise ValidationFailed(f"unknown multipart part {unknown[0]!r}; allowed: request, image, mask_image",
                               field=unknown[0])
    repeated = [(name, len(parts)) for name, parts in [*request.form.lists(), *request.files.lists()]
                if len(parts) > 1]
    if repeated:  # which one would the job use? Refuse rather than silently take the first
        name, count = repeated[0]
        raise ValidationFailed(f"the multipart part {name!r} is given {count} times; give it once", field=name)
    if "request" not in request.form:
        raise ValidationFailed("a multipart body needs a 'request' part holding the job's JSON object",
                               field="request")
    try:
        body = json.loads(request.form["request"])
    except ValueError:
        raise BadRequest("the multipart part 'request' must hold a JSON object", field="request",
                         code="invalid_json") from None
    uploads = {name: request.files[name].read(limits.max_bytes + 1) for name in UPLOAD_FIELDS
               if name in request.files}
    return body, uploads


def submit(services: Services, who: Principal, idempotency_key: str | None) -> tuple[Job, bool]:
    """Create the job (or find the one this idempotency key made); returns (job, created)."""
    settings = services.settings
    limits = Limits(settings.input_max_bytes, settings.input_max_pixels)
    sub = read_submission(limits)
    params = resolve_request(sub.request, services.catalog, settings, frozenset(sub.uploads))
    params = _size_from_given_image(services, sub, params, limits)
    job_id = new_job_id()
    if idempotency_key is not None:
        claim = services.idempotency.claim(who.key_id, idempotency_key, sub.digest, job_id)
        if not claim.fresh:
            return _replayed(services, claim.job_id), False
    try:
        job = create_job(services, who, job_id, params, sub, limits)
    except Exception:
        if idempotency_key is not None:
            services.idempotency.release(who.key_id, idempotency_key, job_id)
        raise
    return job, True


def create_job(services: Services, who: Principal, job_id: str, params: JobParams, sub: Submission,
               limits: Limits) -> Job:
    """Charge the key's quotas, store the inputs, create the record and queue it fairly: the one
    path every new job takes (the API's submit and the dashboard's retry)."""
    services.quotas.take_token(who.key_id)
    if params.webhook_url:
        _check_webhook(params.webhook_url, services.settings.fetch_allow_private)
    services.quotas.admit(who.key_id, job_id)
    try:
        params = params.model_copy(update=_store_inputs(services, job_id, sub, limits, params))
        queue = services.catalog.get(params.model).celery_queue
        extra = {"key_id": who.key_id}
        if request_id := current_request_id():
            extra["request_id"] = request_id  # the worker logs the job's lines with it
        job = services.store.create(job_id, who.owner, params.to_stored(), queue, extra=extra)
    except Exception:
        services.quotas.release(who.key_id, job_id)
        raise
    services.fair.push(queue, who.key_id, job_id)
    if params.webhook_url:
        services.webhooks.watch(job_id)
    services.keys.count_submission(who.key_id)
    return job


def _check_webhook(url: str, allow_private: bool) -> None:
    try:
        safehttp.check_url(url, allow_private)
    except InputRefused as exc:
        raise InputRefused(f"webhook_url: {exc.message}", field="webhook_url", code=exc.code) from None


def _store_inputs(services: Services, job_id: str, sub: Submission, limits: Limits,
                  params: JobParams) -> dict[str, object]:
    """Validate each given input image, resize it to the job's size (a job without one takes the
    input image's, checked against the model's limits), store it as PNG; return the params to add:
    `{image_key|mask_key: key}` and, when it came from the input, the size."""
    raw = _input_bytes(services.settings, sub, limits)
    sized = {}
    if "image" in raw and (params.width is None or params.height is None):
        spec = services.catalog.get(params.model)
        resolved = size_from_input(spec, params, image_size(raw["image"], "image", limits), services.settings)
        sized = {"width": resolved.width, "height": resolved.height}
    size = sized.get("width", params.width), sized.get("height", params.height)
    keys: dict[str, object] = dict(sized)
    for field, data in raw.items():
        key = input_key(job_id, field)
        png = normalize(data, field, limits, size if None not in size else None)
        services.storage.put(key, png, "image/png")
        keys[INPUT_KEYS[field]] = key
    return keys


def _size_from_given_image(services: Services, sub: Submission, params: JobParams, limits: Limits) -> JobParams:
    """An image job without a size, its image in the request: sized (and checked against the model's
    limits) before quotas are charged. An image given by URL is sized once fetched."""
    if params.width is not None and params.height is not None:
        return params
    if "image" in sub.uploads:
        data = sub.uploads["image"]
    elif sub.request.image is not None:
        data = decode_base64(sub.request.image, "image", limits)
    else:
        return params
    spec = services.catalog.get(params.model)
    return size_from_input(spec, params, image_size(data, "image", limits), services.settings)


def _input_bytes(settings, sub: Submission, limits: Limits) -> dict[str, bytes]:
    """The bytes of each given input image, from an upload, base64 or its URL."""
    policy = safehttp.Policy(timeout_s=settings.fetch_timeout_s, max_bytes=limits.max_bytes,
                             max_redirects=settings.fetch_max_redirects, allow_private=settings.fetch_allow_private)
    raw = {}
    for field in INPUT_KEYS:
        if field in sub.uploads:
            raw[field] = sub.uploads[field]
        elif getattr(sub.request, field) is not None:
            raw[field] = decode_base64(getattr(sub.request, field), field, limits)
        elif getattr(sub.request, f"{field}_url") is not None:
            raw[field] = fetch(getattr(sub.request, f"{field}_url"), f"{field}_url", policy)
    return raw


def _replayed(services: Services, job_id: str, wait_s: float = 5.0) -> Job:
    """The job an earlier request with this idempotency key created (it may still be creating)."""
    deadline = time.monotonic() + wait_s
    while (job := services.store.get(job_id)) is None:
        if time.monotonic() > deadline:
            raise Conflict("a request with this Idempotency-Key is still being processed; retry shortly",
                           field="Idempotency-Key", code="idempotency_key_in_use")
        time.sleep(0.05)
    return job
