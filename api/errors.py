"""One error format everywhere: `{"error": {"code", "message", "field"?}}`, mapped here only."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from shared.errors import KilnError, Unauthorized

logger = logging.getLogger(__name__)


def error_response(code: str, message: str, status: int, field: str | None = None):
    body = {"code": code, "message": message}
    if field:
        body["field"] = field
    return jsonify({"error": body}), status


def _headers(exc: KilnError) -> dict[str, str]:
    if getattr(exc, "retry_after", None) is not None:  # 429s and 503s that know when to come back
        return {"Retry-After": str(exc.retry_after)}
    if isinstance(exc, Unauthorized):
        return {"WWW-Authenticate": 'Bearer realm="kiln"'}
    return {}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(KilnError)
    def _kiln(exc: KilnError):
        body, status = error_response(exc.code, exc.message, exc.http_status, exc.field)
        return body, status, _headers(exc)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(code, exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        logger.exception("unhandled error")
        return error_response("internal_error", "an internal error occurred; it has been logged", 500)
