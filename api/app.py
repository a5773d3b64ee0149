"""The Flask app factory. The API authenticates, validates, records, enqueues and reads — it never
runs models and never imports torch."""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from flask import Flask, current_app, jsonify

from api.auth import install_auth
from api.bodylimits import install_body_limits
from api.errors import register_error_handlers
from api.eventhub import EventHub
from api.publicurl import PublicURL
from api.secheaders import install_security_headers
from shared import safehttp, services
from shared.auth import KeyStore
from shared.catalog import load_catalog
from shared.dispatcher import make_webhooks
from shared.fairqueue import FairQueue
from shared.idempotency import Idempotency
from shared.jobs.store import JobStore
from shared.logging import install_request_id
from shared.ratelimit import Quotas, StreamSlots
from shared.settings import Settings, get_settings

logger = logging.getLogger(__name__)


REDIS_WAIT_S = 5.0  # a request waits this long for a free Redis connection before a 503


def api_redis(settings: Settings) -> redis.Redis:
    """The API process's Redis client. Its pool blocks rather than fails when every connection is
    in use: under the evented worker hundreds of requests may touch Redis at the same moment."""
    pool = redis.BlockingConnectionPool.from_url(settings.redis_url, decode_responses=True, timeout=REDIS_WAIT_S,
                                                 max_connections=settings.api_redis_connections)
    return redis.Redis(connection_pool=pool)


class Services:
    """What request handlers use, created once per app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = JobStore(api_redis(settings), settings.key_prefix, settings.retention_s)
        self.storage = services.storage(settings)
        self.catalog = load_catalog(settings)
        client = self.store.redis
        self.keys = KeyStore(client, settings.key_prefix)
        self.quotas = Quotas(client, settings.key_prefix, settings.rate_limit_per_s, settings.rate_limit_burst,
                             settings.max_active_jobs)
        self.idempotency = Idempotency(client, settings.key_prefix, settings.idempotency_ttl_s)
        self.fair = FairQueue(client, settings.key_prefix)
        self.webhooks = make_webhooks(settings, client)
        self.streams = threading.BoundedSemaphore(settings.sse_max_streams)
        self.stream_slots = StreamSlots(client, settings.key_prefix, settings.sse_max_streams_per_key,
                                        ttl_s=3 * settings.sse_key_recheck_s)
        self.events = EventHub(client, settings.key_prefix)


def create_app(settings: Settings | None = None, test_config: dict[str, Any] | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config.update(JSON_SORT_KEYS=False)
    if test_config:
        app.config.update(test_config)
    app.extensions["kiln"] = Services(settings)
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

    from api.admin import bp as admin_bp
    from api.blueprints import docs, events, health, jobs, keys, metrics, models

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


def kiln() -> Services:
    """The current app's services."""
    return current_app.extensions["kiln"]
