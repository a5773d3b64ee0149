"""Kiln's error hierarchy. Errors cross process boundaries as data: a code and a message.

The API maps every `KilnError` to one JSON shape, `{"error": {"code", "message", "field"?}}`,
with the class's HTTP status (see `api/errors.py`).
"""

from __future__ import annotations


class KilnError(Exception):
    """Base class: a stable machine-readable `code`, a human message, an HTTP status."""

    code = "internal_error"
    http_status = 500

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code

    def to_dict(self) -> dict[str, str]:
        body = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return body


class BadRequest(KilnError):
    code, http_status = "bad_request", 400


class ValidationFailed(KilnError):
    code, http_status = "invalid_field", 422


class NotFound(KilnError):
    code, http_status = "not_found", 404


class Conflict(KilnError):
    code, http_status = "conflict", 409


class ServiceUnavailable(KilnError):
    code, http_status = "unavailable", 503


# Job failures recorded by workers (never raised to HTTP clients directly).
class JobError(KilnError):
    code = "job_failed"


class ModelLoadError(JobError):
    code = "model_load_failed"


class PipelineError(JobError):
    code = "pipeline_failed"


class JobCanceled(JobError):
    code = "canceled"


class Unauthorized(KilnError):
    code, http_status = "unauthorized", 401


class Forbidden(KilnError):
    code, http_status = "forbidden", 403


class TooManyRequests(KilnError):
    """A quota is exhausted; `retry_after` (seconds) becomes the `Retry-After` header."""

    code, http_status = "rate_limited", 429

    def __init__(self, message: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, int(-(-retry_after // 1)))


class PayloadTooLarge(KilnError):
    code, http_status = "payload_too_large", 413


class InputRefused(KilnError):
    """An input image or URL was refused (address not allowed, too big, not an image …)."""

    code, http_status = "input_refused", 422
