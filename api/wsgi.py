"""WSGI entry point: `gunicorn api.wsgi:app` (without --preload: each worker process starts its
own dispatcher threads after the fork)."""

from api.app import create_app
from shared.dispatcher import Dispatcher
from shared.logging import configure_logging
from shared.settings import get_settings

settings = get_settings()
configure_logging(settings.log_level, settings.log_format)
app = create_app(settings)
if settings.dispatch_in_api:
    Dispatcher(settings).start_threads()
