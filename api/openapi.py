"""The OpenAPI 3.1 document, generated from the pydantic models the code validates with.

Schemas come from `JobRequest` (what `POST /v1/jobs` parses) and `api.schemas` (what handlers
dump responses through); only the list of operations is written here, as a table.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic.json_schema import models_json_schema

from api import schemas
from shared.jobs.schema import JobRequest

REF = "#/components/schemas/{model}"
MODELS = [JobRequest, schemas.KeyCreate, schemas.ErrorResponse, schemas.JobView, schemas.JobList,
          schemas.KeyView, schemas.KeyCreated, schemas.KeyList, schemas.Me, schemas.Health,
          schemas.ModelList, schemas.ModelView, schemas.SchedulerList, schemas.LoraList]

JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
KEY_ID = {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}}
IDEMPOTENCY = {"name": "Idempotency-Key", "in": "header", "required": False,
               "schema": {"type": "string", "minLength": 1, "maxLength": 255},
               "description": "same key + same body → the same job; same key + another body → 409"}
LIST_PARAMS = [
    {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["queued", "running", "succeeded",
                                                                            "failed", "canceled"]}},
    {"name": "model", "in": "query", "schema": {"type": "string"}},
    {"name": "created_after", "in": "query", "schema": {"type": "string"}, "description": "ISO 8601 or Unix s"},
    {"name": "created_before", "in": "query", "schema": {"type": "string"}, "description": "ISO 8601 or Unix s"},
    {"name": "owner", "in": "query", "schema": {"type": "string"}, "description": "admins only"},
    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
]
MULTIPART = {"type": "object", "properties": {
    "request": {"type": "string", "description": "the JobRequest as JSON"},
    "image": {"type": "string", "format": "binary"}, "mask_image": {"type": "string", "format": "binary"}}}

# (method, path, operation id, summary, parameters, request schema, {status: response}, public)
OPERATIONS: list[tuple] = [
    ("post", "/v1/jobs", "submitJob", "Submit a job", [IDEMPOTENCY], "JobRequest",
     {"202": "JobView", "200": "JobView"}, False),
    ("get", "/v1/jobs", "listJobs", "List the caller's jobs, newest first", LIST_PARAMS, None,
     {"200": "JobList"}, False),
    ("get", "/v1/jobs/{job_id}", "getJob", "Read a job", [JOB_ID], None, {"200": "JobView"}, False),
    ("post", "/v1/jobs/{job_id}/cancel", "cancelJob", "Cancel a job", [JOB_ID], None,
     {"200": "JobView", "202": "JobView"}, False),
    ("get", "/v1/jobs/{job_id}/events", "jobEvents", "Job events as Server-Sent Events", [JOB_ID], None,
     {"200": "text/event-stream"}, False),
    ("get", "/v1/jobs/{job_id}/outputs/{index}", "getOutput", "Download an output image",
     [JOB_ID, {"name": "index", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}],
     None, {"200": "image", "302": "redirect"}, False),
    ("get", "/v1/jobs/{job_id}/preview", "getPreview", "The latest preview of a job (with preview_every)",
     [JOB_ID], None, {"200": "image", "302": "redirect"}, False),
    ("get", "/v1/models", "listModels", "Models and schedulers", [], None, {"200": "ModelList"}, False),
    ("get", "/v1/models/{name}", "getModel", "One model",
     [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}], None,
     {"200": "ModelView"}, False),
    ("get", "/v1/schedulers", "listSchedulers", "Schedulers", [], None, {"200": "SchedulerList"}, False),
    ("get", "/v1/loras", "listLoras", "LoRA adapters jobs may apply", [], None, {"200": "LoraList"}, False),
    ("get", "/v1/me", "me", "The calling key", [], None, {"200": "Me"}, False),
    ("post", "/v1/keys", "createKey", "Create an API key (admin)", [], "KeyCreate", {"201": "KeyCreated"}, False),
    ("get", "/v1/keys", "listKeys", "List API keys (admin)", [], None, {"200": "KeyList"}, False),
    ("get", "/v1/keys/{key_id}", "getKey", "Read an API key (admin)", [KEY_ID], None, {"200": "KeyView"}, False),
    ("delete", "/v1/keys/{key_id}", "revokeKey", "Revoke an API key (admin)", [KEY_ID], None,
     {"200": "KeyView"}, False),
    ("get", "/healthz", "healthz", "Readiness (Redis, storage)", [], None, {"200": "Health", "503": "Health"}, True),
    ("get", "/livez", "livez", "Liveness", [], None, {"200": "Health"}, True),
]
ERRORS = {"400": "bad request", "401": "no, unknown or revoked key", "403": "needs an admin key",
          "404": "not found (or another owner's)", "405": "method not allowed",
          "408": "the request body stopped arriving", "409": "conflict",
          "413": "too large", "422": "invalid field", "429": "quota exhausted (see Retry-After)",
          "503": "unavailable"}


def _response(kind: str) -> dict[str, Any]:
    if kind == "text/event-stream":
        return {"description": "event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}
    if kind == "image":
        return {"description": "the image", "content": {"image/*": {"schema": {"type": "string",
                                                                                  "format": "binary"}}}}
    if kind == "redirect":
        return {"description": "redirect to a presigned URL", "headers": {"Location": {"schema": {"type": "string"}}}}
    return {"description": kind, "content": {"application/json": {"schema": {"$ref": REF.format(model=kind)}}}}


def _operation(op_id: str, summary: str, params: list, body: str | None, responses: dict, public: bool) -> dict:
    error = {"content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}}
    operation: dict[str, Any] = {"operationId": op_id, "summary": summary, "parameters": params,
                                 "responses": {code: _response(kind) for code, kind in responses.items()}}
    for code, text in ERRORS.items():
        operation["responses"].setdefault(code, {"description": text, **error})
    if body:
        content = {"application/json": {"schema": {"$ref": REF.format(model=body)}}}
        if op_id == "submitJob":
            content["multipart/form-data"] = {"schema": MULTIPART}
        operation["requestBody"] = {"required": True, "content": content}
    if public:
        operation["security"] = []
    return operation


@functools.lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in MODELS], ref_template=REF)
    paths: dict[str, dict] = {}
    for method, path, *rest in OPERATIONS:
        paths.setdefault(path, {})[method] = _operation(*rest)
    return {
        "openapi": "3.1.0",
        "info": {"title": "Kiln", "version": "1", "description": "Diffusion image models as asynchronous jobs."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": defs["$defs"],
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }
