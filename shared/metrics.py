"""Prometheus metrics of Kiln: every name in one place, and the hooks that move them.

Two kinds of metric, because the API runs as several gunicorn processes and a worker as one
process per GPU:

* **Cluster state** (jobs by status, queue depth, oldest queued job) is read from Redis when
  `/metrics` is scraped (`ClusterCollector`), so every API process answers the same numbers and
  no per-process counter has to be merged.
* **Worker activity** (queue wait, run time, denoising steps, batch size, pipeline cache) is
  counted in the worker process, in `WORKER_REGISTRY`, by the `observe_*` hooks the job runner
  calls; `worker.metrics` serves that registry over HTTP.

Torch-free: the API and tests import this module; device memory is collected in `worker.metrics`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from shared.jobs.record import Status
from shared.workers import WorkerState

logger = logging.getLogger(__name__)

NAMESPACE = "kiln"

# Buckets (seconds). Queue wait spans "picked up at once" to "waited for a cold GPU node";
# a run spans a tiny model on CPU (tenths of a second) to a large SDXL batch (minutes).
QUEUE_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
RUN_TIME_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
STEP_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)

# --- worker activity -------------------------------------------------------------------------
WORKER_REGISTRY = CollectorRegistry(auto_describe=True)

WORKER_INFO = Gauge(
    "worker_info", "Constant 1 per worker process; labels say who and on what it runs",
    ["worker_id", "device", "dtype", "queues"], namespace=NAMESPACE, registry=WORKER_REGISTRY)
WORKER_RUNNING = Gauge(
    "worker_running_jobs", "Jobs this worker is running now", namespace=NAMESPACE, registry=WORKER_REGISTRY)
WORKER_SLOTS = Gauge(
    "worker_slots", "Jobs this worker can run at once (KILN_WORKER_SLOTS)", namespace=NAMESPACE,
    registry=WORKER_REGISTRY)
JOBS_STARTED = Counter(
    "worker_jobs_started", "Jobs this worker started (a retry counts again)", ["model"],
    namespace=NAMESPACE, registry=WORKER_REGISTRY)
JOBS_FINISHED = Counter(
    "worker_jobs_finished", "Jobs this worker ended, by final status", ["model", "status"],
    namespace=NAMESPACE, registry=WORKER_REGISTRY)
QUEUE_WAIT = Histogram(
    "job_queue_wait_seconds", "Time from submission to the start of a run", ["model"],
    buckets=QUEUE_WAIT_BUCKETS, namespace=NAMESPACE, registry=WORKER_REGISTRY)
RUN_TIME = Histogram(
    "job_run_seconds", "Time from the start of a run to its end (load, denoise, upload)",
    ["model", "status"], buckets=RUN_TIME_BUCKETS, namespace=NAMESPACE, registry=WORKER_REGISTRY)
LOAD_TIME = Histogram(
    "job_load_seconds", "Time a run spent getting its pipeline (near 0 on a cache hit)", ["model"],
    buckets=RUN_TIME_BUCKETS, namespace=NAMESPACE, registry=WORKER_REGISTRY)
DENOISE_CALLS = Counter(
    "denoise_model_calls", "Denoising model calls (one per step of a batch)",
    namespace=NAMESPACE, registry=WORKER_REGISTRY)
DENOISE_STEPS = Counter(
    "denoise_steps", "Denoising steps done, summed over the jobs of each batch "
    "(rate() of this is steps/s)", namespace=NAMESPACE, registry=WORKER_REGISTRY)
STEP_TIME = Histogram(
    "denoise_step_seconds", "Wall time of one batched denoising step", buckets=STEP_TIME_BUCKETS,
    namespace=NAMESPACE, registry=WORKER_REGISTRY)
BATCH_SIZE = Histogram(
    "denoise_batch_size", "Jobs in one batched denoising step", buckets=BATCH_SIZE_BUCKETS,
    namespace=NAMESPACE, registry=WORKER_REGISTRY)
STEPS_PER_SECOND = Gauge(
    "denoise_steps_per_second", "Job-steps per second of the latest denoising step",
    namespace=NAMESPACE, registry=WORKER_REGISTRY)


def _status_value(status: Status | str) -> str:
    return status.value if isinstance(status, Status) else str(status)


def describe_worker(worker_id: str, device: str, dtype: str, queues: str, slots: int) -> None:
    """Publish `kiln_worker_info` and `kiln_worker_slots` once the worker knows its placement."""
    WORKER_INFO.labels(worker_id=worker_id, device=device, dtype=dtype, queues=queues).set(1)
    WORKER_SLOTS.set(slots)


def observe_job_started(job: Any, now: float | None = None) -> None:
    """A run of `job` (a `shared.jobs.record.Job`) begins: queue wait, running jobs."""
    now = time.time() if now is None else now
    JOBS_STARTED.labels(model=job.model).inc()
    QUEUE_WAIT.labels(model=job.model).observe(max(0.0, now - job.created_at))
    WORKER_RUNNING.inc()


def observe_job_finished(job: Any, status: Status | str, timings: dict[str, float]) -> None:
    """A run of `job` ended with `status`; `timings` are the runner's (`load_s`, `total_s`, …).

    A run that failed before `total_s` was measured counts its time from `job.started_at`
    when known, else not at all.
    """
    model, value = job.model, _status_value(status)
    JOBS_FINISHED.labels(model=model, status=value).inc()
    total = timings.get("total_s")
    if total is None and getattr(job, "started_at", None):
        total = max(0.0, time.time() - job.started_at)
    if total is not None:
        RUN_TIME.labels(model=model, status=value).observe(total)
    if "load_s" in timings:
        LOAD_TIME.labels(model=model).observe(timings["load_s"])
    WORKER_RUNNING.dec()


def observe_step(batch_size: int, seconds: float) -> None:
    """One denoising model call advanced `batch_size` jobs by one step in `seconds`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    DENOISE_CALLS.inc()
    DENOISE_STEPS.inc(batch_size)
    STEP_TIME.observe(max(0.0, seconds))
    BATCH_SIZE.observe(batch_size)
    if seconds > 0:
        STEPS_PER_SECOND.set(batch_size / seconds)


# --- pipeline cache ---------------------------------------------------------------------------
class CacheLike(Protocol):
    """What `worker.pipeline_cache.PipelineCache` offers (duck-typed: this module is torch-free)."""

    stats: dict[str, int]

    def used_bytes(self) -> int: ...

    def names(self) -> list[str]: ...


class PipelineCacheCollector(Collector):
    """Reads a pipeline cache's counters when scraped."""

    def __init__(self, cache: CacheLike, budget_bytes: int | None = None) -> None:
        self.cache, self.budget_bytes = cache, budget_bytes

    def collect(self) -> Iterator[Any]:
        stats = dict(self.cache.stats)
        for name in ("hits", "loads", "evictions"):
            yield CounterMetricFamily(f"{NAMESPACE}_pipeline_cache_{name}", f"Pipeline cache {name}",
                                      value=stats.get(name, 0))
        yield GaugeMetricFamily(f"{NAMESPACE}_pipeline_cache_bytes", "Bytes held by cached pipelines",
                                value=self.cache.used_bytes())
        yield GaugeMetricFamily(f"{NAMESPACE}_pipeline_cache_models", "Pipelines in the cache",
                                value=len(self.cache.names()))
        if self.budget_bytes is not None:
            yield GaugeMetricFamily(f"{NAMESPACE}_pipeline_cache_budget_bytes",
                                    "Memory budget of the pipeline cache", value=self.budget_bytes)


_bound: dict[str, Collector] = {}
_bound_lock = threading.Lock()


def bind_collector(name: str, collector: Collector, registry: CollectorRegistry = WORKER_REGISTRY) -> None:
    """Register `collector` under `name`, replacing an earlier one of that name."""
    with _bound_lock:
        old = _bound.pop(name, None)
        if old is not None:
            registry.unregister(old)
        registry.register(collector)
        _bound[name] = collector


def bind_pipeline_cache(cache: CacheLike, budget_bytes: int | None = None) -> None:
    """Expose `cache.stats` (hits, loads, evictions) and its size on the worker's `/metrics`."""
    bind_collector("pipeline_cache", PipelineCacheCollector(cache, budget_bytes))


# --- cluster state (API) ----------------------------------------------------------------------
WORKER_STATES = (*(s.value for s in WorkerState), "stale")  # heartbeat states, and stale = silent
class ClusterCollector(Collector):
    """Jobs by status and queue depths, read from Redis at scrape time.

    Args:
        store: a `shared.jobs.store.JobStore` (its `count(status)` reads the status indexes).
        broker: a Redis client on the Celery broker, or None when the broker is not Redis.
        queues: a callable returning the Celery queue names to measure (Celery's Redis
            transport keeps each queue as a Redis list of that name).
        fair: a `shared.fairqueue.FairQueue`, whose per-key lists hold the jobs not yet sent to
            Celery, or None.
        workers: a `shared.workers.WorkerRegistry` (the workers' heartbeats), or None.
    """

    def __init__(self, store: Any, broker: Any, queues: Callable[[], Iterable[str]], fair: Any = None,
                 workers: Any = None) -> None:
        self.store, self.broker, self.queues = store, broker, queues
        self.fair, self.workers = fair, workers

    def collect(self) -> Iterator[Any]:
        try:
            families = [self._jobs(), self._oldest_queued()]
            if self.broker is not None:
                families.append(self._queue_depth())
            if self.fair is not None:
                families.append(self._waiting())
            if self.workers is not None:
                families.append(self._workers())
            up = 1
        except redis.RedisError as exc:  # a scrape must still answer, saying Redis is down
            logger.warning("metrics: Redis unavailable: %s", exc)
            families, up = [], 0
        yield GaugeMetricFamily(f"{NAMESPACE}_redis_up", "1 when the API could read Redis for this scrape",
                                value=up)
        yield from families

    def _jobs(self) -> GaugeMetricFamily:
        jobs = GaugeMetricFamily(f"{NAMESPACE}_jobs", "Job records by status (within retention)",
                                 labels=["status"])
        for status in Status:
            jobs.add_metric([status.value], self.store.count(status))
        return jobs

    def _queue_depth(self) -> GaugeMetricFamily:
        depth = GaugeMetricFamily(f"{NAMESPACE}_queue_depth", "Tasks waiting in a Celery queue",
                                  labels=["queue"])
        for queue in sorted(set(self.queues())):
            depth.add_metric([queue], self.broker.llen(queue))
        return depth

    def _waiting(self) -> GaugeMetricFamily:
        waiting = GaugeMetricFamily(f"{NAMESPACE}_queue_waiting",
                                    "Jobs waiting for fair dispatch into a Celery queue", labels=["queue"])
        for queue in sorted(set(self.queues()) | set(self.fair.queues())):
            waiting.add_metric([queue], self.fair.waiting(queue))
        return waiting

    def _workers(self) -> GaugeMetricFamily:
        counts = dict.fromkeys(WORKER_STATES, 0)
        for worker in self.workers.list():
            state = "stale" if worker.stale else worker.state
            counts[state] = counts.get(state, 0) + 1
        family = GaugeMetricFamily(f"{NAMESPACE}_workers", "Workers by heartbeat state", labels=["state"])
        for state, count in counts.items():
            family.add_metric([state], count)
        return family

    def _oldest_queued(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{NAMESPACE}_oldest_queued_job_age_seconds",
                                 "Age of the oldest job still queued (0 when none is)",
                                 value=self._oldest_queued_age())

    def _oldest_queued_age(self) -> float:
        key = self.store.index_key(Status.QUEUED)
        oldest = self.store.redis.zrange(key, 0, 0, withscores=True)
        return max(0.0, time.time() - oldest[0][1]) if oldest else 0.0


def cluster_registry(store: Any, broker: Any, queues: Callable[[], Iterable[str]],
                     fair: Any = None, workers: Any = None) -> CollectorRegistry:
    """A registry holding only the cluster-state collector (what the API's `/metrics` serves)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(store, broker, queues, fair, workers))
    return registry
