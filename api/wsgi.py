"""WSGI entry point: `gunicorn api.wsgi:app`."""

import logging
import os

from api.app import create_app

logging.basicConfig(level=os.environ.get("KILN_LOG_LEVEL", "INFO"),
                    format="%(asctime)s %(levelname)s %(name)s %(message)s")
app = create_app()
