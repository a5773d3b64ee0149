"""The worker process: a Celery app whose one task runs a job by id.

One process per GPU, a thread per job slot; jobs of one model share its step batcher. Built
once per process: the pipeline cache and the runner; beside them run a reaper (requeues jobs
whose worker died) and a heartbeat (this worker's status for the dashboard).
"""

from __future__ import annotations

import functools
import logging
import time

from celery.signals import worker_ready, worker_shutting_down

from shared import services
from shared.affinity import direct_queue, hand_back
from shared.catalog import load_catalog
from shared.celery_app import RUN_JOB_TASK, make_celery
from shared.logging import set_worker_id
from shared.metrics import bind_pipeline_cache, describe_worker
from shared.settings import get_settings
from shared.workers import WorkerRegistry, WorkerStatus
from worker.device import Placement, choose_placement
from worker.execute import LoadedModel, load_model
from worker.heartbeat import Heartbeat, base_status
from worker.metrics import MetricsServer, bind_device_memory, redis_health, start_metrics_server
from worker.pipeline_cache import PipelineCache
from worker.reaper import Reaper
from worker.runner import JobRunner, new_worker_id

logger = logging.getLogger("kiln.worker")
settings = get_settings()
celery = make_celery(settings)
WORKER_ID = new_worker_id()


def queues() -> list[str]:
    """The shared queues from the settings, then this worker's direct queue (model affinity)."""
    return [q for q in settings.worker_queues.split(",") if q] + [direct_queue(WORKER_ID)]


@functools.lru_cache(maxsize=1)
def placement() -> Placement:
    chosen = choose_placement(settings.device, settings.dtype)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    logger.info("worker runs models on %s", chosen.describe())
    return chosen


@functools.lru_cache(maxsize=1)
def runner() -> JobRunner:
    catalog = load_catalog(settings)

    def load(name: str) -> LoadedModel:
        from worker.pipelines import DiffusionPipeline

        spec = catalog.get(name)
        pipe = DiffusionPipeline.from_pretrained(
            spec.source, torch_dtype=placement().dtype, revision=spec.revision, variant=spec.variant
        )
        return load_model(name, pipe.to(placement().device), settings.max_batch_rows)

    cache = PipelineCache(load, settings.pipeline_cache_bytes)
    set_worker_id(WORKER_ID)
    bind_pipeline_cache(cache, settings.pipeline_cache_bytes)
    bind_device_memory(str(placement().device))
    describe_worker(WORKER_ID, str(placement().device), str(placement().dtype).removeprefix("torch."),
                    ",".join(queues()), settings.worker_slots)
    return JobRunner(settings, services.job_store(settings), services.storage(settings), catalog, cache,
                     WORKER_ID)


_metrics: MetricsServer | None = None


def start_metrics() -> None:
    """Serve /metrics, /livez and /healthz on KILN_METRICS_PORT from process start."""
    global _metrics
    _metrics = start_metrics_server(settings.metrics_port,
                                    health=redis_health(services.job_store(settings).redis))


@celery.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    return runner().run(job_id)


class StatusReporter:
    """Builds this worker's `WorkerStatus`; steps/s over the time since the last report."""

    def __init__(self, r: JobRunner) -> None:
        self.runner = r
        self.base = base_status(r.worker_id, placement().describe(), queues(), settings.worker_slots)
        self._last = (time.monotonic(), 0)

    def __call__(self) -> WorkerStatus:
        loaded: list[LoadedModel] = self.runner.cache.values()
        steps = sum(m.batcher.stats.job_steps for m in loaded)
        now = time.monotonic()
        then, before = self._last
        self._last = (now, steps)
        status = WorkerStatus(**{**self.base.__dict__})
        status.models = [m.name for m in loaded]
        status.memory_bytes = self.runner.cache.used_bytes()
        status.memory_budget_bytes = settings.pipeline_cache_bytes
        status.running_jobs = self.runner.running_jobs()
        status.batch_size = max((m.batcher.stats.last_batch_jobs for m in loaded), default=0)
        status.steps_per_s = round((steps - before) / max(now - then, 1e-6), 3)
        return status


_threads: dict[str, object] = {}


@worker_ready.connect
def _start_background(**_: object) -> None:
    r = runner()
    registry = WorkerRegistry(r.store.redis, settings.key_prefix)
    reaper = Reaper(r.store, celery, settings.reaper_interval_s, settings.max_attempts, grace_s=1.0,
                    registry=registry)
    heartbeat = Heartbeat(registry, StatusReporter(r))
    reaper.start()
    heartbeat.start()
    _threads.update(reaper=reaper, heartbeat=heartbeat)
    if _metrics is not None:
        _metrics.mark_ready()
    logger.info("worker %s ready; queues %s; %d job slots", r.worker_id, settings.worker_queues,
                settings.worker_slots)


@worker_shutting_down.connect
def _stop_background(**_: object) -> None:
    """Warm shutdown (SIGTERM): Celery stops taking jobs and lets running ones finish."""
    heartbeat = _threads.get("heartbeat")
    if heartbeat is not None:
        heartbeat.beat(state="stopping")
        heartbeat.stop()
    reaper = _threads.get("reaper")
    if reaper is not None:
        reaper.stop()
        moved = hand_back(reaper.broker, WORKER_ID, reaper.resend)
        logger.info("handed %d waiting jobs back to the shared queues", moved)
