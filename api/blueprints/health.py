"""Liveness and readiness: `GET /healthz` checks Redis and storage."""

from __future__ import annotations

from flask import Blueprint, jsonify

from api.services import kiln

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    checks: dict[str, str] = {}
    try:
        kiln().store.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:  # any connection problem means not ready
        checks["redis"] = f"error: {exc}"
    try:
        kiln().storage.health()
        checks["storage"] = "ok"
    except Exception as exc:
        checks["storage"] = f"error: {exc}"
    healthy = all(value == "ok" for value in checks.values())
    return jsonify({"status": "ok" if healthy else "unavailable", "checks": checks}), 200 if healthy else 503


@bp.get("/livez")
def livez():
    return jsonify({"status": "ok"})
