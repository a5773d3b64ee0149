"""The API's services — job store, storage, catalog, keys, quotas, queues, webhooks, events —
created once per app by the factory and reached by request handlers through `kiln()`.

Its own module (as the Flask tutorial keeps `get_db` in `db.py`), so that blueprints and helpers
import it without importing the app factory, which imports them: no import circle.
"""

from __future__ import annotations

import threading

import redis
from flask import current_app

from api.eventhub import EventHub
from shared import services
from shared.auth import KeyStore
from shared.catalog import load_catalog
from shared.dispatcher import make_webhooks
from shared.fairqueue import FairQueue
from shared.idempotency import Idempotency
from shared.jobs.store import JobStore
from shared.ratelimit import Quotas, StreamSlots
from shared.settings import Settings

EXTENSION = "kiln"  # the key of the services in `app.extensions`
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


def kiln() -> Services:
    """The current app's services."""
    return current_app.extensions[EXTENSION]
