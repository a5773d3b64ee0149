"""The Flask app factory. The API authenticates, validates, records, enqueues and reads — it never
runs models and never imports torch."""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, jsonify

from api.admin import bp as admin_bp
from api.auth import install_auth
from api.blueprints import docs, events, health, jobs, keys, metrics, models
from api.bodylimits import install_body_limits
from api.errors import register_error_handlers
from api.publicurl import PublicURL
from api.secheaders import install_security_headers
from api.services import EXTENSION, Services, kiln
from shared import safehttp
from shared.logging import install_request_id
from shared.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, test_config: dict[str, Any] | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config.update(JSON_SORT_KEYS=False)
    # `/v1/jobs//events` is a 404, not a 308 to `/v1/jobs/events` with an HTML body (set before routes bind).
    app.url_map.merge_slashes = False
    if test_config:
        app.config.update(test_config)
    app.extensions[EXTENSION] = Services(settings)
    app.wsgi_app = PublicURL(app.wsgi_app, settings.public_url)  # URLs never follow the Host header
    safehttp.set_input_fetch_limit(settings.fetch_max_concurrent)
    register_error_handlers(app)
    install_security_headers(app)
    _register_outage_handler(app)
    install_request_id(app)  # before auth, so refused requests get an id too
    with app.app_context():
        install_auth(app)
        install_body_limits(app, settings)  # after auth: a submission's rate limit comes first
        _bootstrap_admin(settings)

    for blueprint in (health.bp, metrics.bp, jobs.bp, events.bp, models.bp, keys.bp, docs.bp, admin_bp):
        app.register_blueprint(blueprint)
    logger.info("Kiln API ready (storage=%s, auth=%s)", settings.storage, settings.auth)
    return app


def _register_outage_handler(app: Flask) -> None:
    """Redis (job records, keys, the broker) unreachable is an outage, not a bug: 503 with
    `Retry-After`, in the one error shape, so clients retry instead of giving up."""

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    def _redis_down(exc: Exception):
        logger.warning("Redis unavailable: %s", exc)
        body = {"error": {"code": "unavailable", "message": "the job store (Redis) is unavailable; retry shortly"}}
        return jsonify(body), 503, {"Retry-After": "2"}


def _bootstrap_admin(settings: Settings) -> None:
    """Register `KILN_BOOTSTRAP_ADMIN_KEY` as an admin key (once; a revoked one stays revoked)."""
    if not settings.bootstrap_admin_key:
        return
    try:
        kiln().keys.create(role="admin", name="bootstrap", token=settings.bootstrap_admin_key)
    except Exception as exc:  # Redis not up yet: the API still starts; /healthz says why
        logger.error("could not register the bootstrap admin key: %s", exc)
