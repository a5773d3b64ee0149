"""The Flask app factory. The API authenticates, validates, records, enqueues and reads — it never
runs models and never imports torch."""

from __future__ import annotations

import logging
import threading
from typing import Any

from flask import Flask, current_app

from api.auth import install_auth
from api.errors import register_error_handlers
from shared import services
from shared.auth import KeyStore
from shared.catalog import load_catalog
from shared.dispatcher import make_webhooks
from shared.fairqueue import FairQueue
from shared.idempotency import Idempotency
from shared.logging import install_request_id
from shared.ratelimit import Quotas
from shared.settings import Settings, get_settings

logger = logging.getLogger(__name__)


class Services:
    """What request handlers use, created once per app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = services.job_store(settings)
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


def create_app(settings: Settings | None = None, test_config: dict[str, Any] | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config.update(JSON_SORT_KEYS=False, MAX_CONTENT_LENGTH=40 * 1024 * 1024)
    if test_config:
        app.config.update(test_config)
    app.extensions["kiln"] = Services(settings)
    register_error_handlers(app)
    install_request_id(app)  # before auth, so refused requests get an id too
    with app.app_context():
        install_auth(app)
        _bootstrap_admin(settings)

    from api.admin import bp as admin_bp
    from api.blueprints import docs, events, health, jobs, keys, metrics, models

    for blueprint in (health.bp, metrics.bp, jobs.bp, events.bp, models.bp, keys.bp, docs.bp, admin_bp):
        app.register_blueprint(blueprint)
    logger.info("Kiln API ready (storage=%s, auth=%s)", settings.storage, settings.auth)
    return app


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
