"""`GET /metrics`: cluster state in the Prometheus text format.

Jobs by status, the jobs waiting for fair dispatch, the depth of every Celery queue and the
workers by heartbeat state are read from Redis at scrape time, so each
gunicorn process answers the same numbers. Scrape it inside the cluster: the Ingress in
`infra/k8s` does not route `/metrics`.
"""

from __future__ import annotations

import redis
from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.services import kiln
from shared.celery_app import DEFAULT_QUEUE
from shared.metrics import cluster_registry
from shared.workers import WorkerRegistry

bp = Blueprint("metrics", __name__)

_REGISTRY_KEY = "kiln_metrics_registry"


def _queues() -> list[str]:
    """Every queue a job can be sent to: the default and one per catalog queue."""
    return [DEFAULT_QUEUE, *(spec.celery_queue for spec in kiln().catalog)]


def _broker_client(url: str) -> redis.Redis | None:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None  # queue depth is measured on Redis brokers only
    return redis.Redis.from_url(url, decode_responses=True)


def _registry() -> CollectorRegistry:
    """The app's registry, built on first scrape (one broker connection pool per app)."""
    registry = current_app.extensions.get(_REGISTRY_KEY)
    if registry is None:
        services = kiln()
        catalog_queues = _queues()
        broker = _broker_client(services.settings.celery_broker_url)
        workers = WorkerRegistry(services.store.redis, services.settings.key_prefix)
        registry = cluster_registry(services.store, broker, lambda: catalog_queues,
                                    getattr(services, "fair", None), workers)
        current_app.extensions[_REGISTRY_KEY] = registry
    return registry


@bp.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)
