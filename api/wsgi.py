"""WSGI entry point: `gunicorn api.wsgi:app` (without --preload: each worker process starts its
own dispatcher threads after the fork)."""

import logging
import os

from api.app import create_app
from shared.dispatcher import Dispatcher

logging.basicConfig(level=os.environ.get("KILN_LOG_LEVEL", "INFO"),
                    format="%(asctime)s %(levelname)s %(name)s %(message)s")
app = create_app()
settings = app.extensions["kiln"].settings
if settings.dispatch_in_api:
    Dispatcher(settings).start_threads()
