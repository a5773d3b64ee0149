"""The Flask app factory. The API validates, records, enqueues and reads — it never runs models
and never imports torch."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, current_app

from api.errors import register_error_handlers
from shared import services
from shared.catalog import load_catalog
from shared.settings import Settings, get_settings


class Services:
    """What request handlers use, created once per app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = services.job_store(settings)
        self.storage = services.storage(settings)
        self.celery = services.celery(settings)
        self.catalog = load_catalog(settings)


def create_app(settings: Settings | None = None, test_config: dict[str, Any] | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config.update(JSON_SORT_KEYS=False, MAX_CONTENT_LENGTH=40 * 1024 * 1024)
    if test_config:
        app.config.update(test_config)
    app.extensions["kiln"] = Services(settings)
    register_error_handlers(app)

    from api.blueprints import health, jobs, models

    app.register_blueprint(health.bp)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(models.bp)
    logging.getLogger(__name__).info("Kiln API ready (storage=%s)", settings.storage)
    return app


def kiln() -> Services:
    """The current app's services."""
    return current_app.extensions["kiln"]
