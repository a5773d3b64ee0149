"""The worker process: a Celery app whose one task runs a job by id.

One process per GPU, a thread per job slot; jobs of one model share its step batcher. One
`WorkerProcess` per process holds what is built once (placement, pipeline cache, runner) and the
background threads (a reaper that requeues jobs of dead workers, a heartbeat reporting this
worker's status and lifecycle state), and moves through `WorkerState`:

    starting ──▶ ready ──▶ draining ──▶ stopping
    (preloading the   (serving)  (SIGTERM: no new     (exiting; also at once
     default model)              jobs, running finish) when the device broke)
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable

from celery import Celery, Task
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from shared import services
from shared.affinity import direct_queue, hand_back
from shared.catalog import Catalog, load_catalog
from shared.celery_app import RUN_JOB_TASK, enqueue_job, make_celery
from shared.logging import set_worker_id
from shared.metrics import bind_pipeline_cache, describe_worker
from shared.settings import Settings, get_settings
from shared.workers import WorkerRegistry, WorkerState, WorkerStatus
from worker.device import Placement, choose_placement
from worker.loaded_model import LoadedModel, call_cost_cap, load_model
from worker.faults import DeviceBroken, InfrastructureUnavailable
from worker.heartbeat import Heartbeat, base_status
from worker.metrics import MetricsServer, bind_device_memory, redis_health, start_metrics_server
from worker.pipeline_cache import PipelineCache
from worker.reaper import Reaper
from worker.runner import JobRunner, new_worker_id

logger = logging.getLogger("kiln.worker")

EXIT_DEVICE_BROKEN = 70  # the exit status of a worker whose device failed; its supervisor restarts it


def retry_countdown(retries: int) -> float:
    """Seconds before the `retries`-th redelivery of a handed-back job: 1, 2, 4 … 30."""
    return min(2.0 ** retries, 30.0)


class WorkerProcess:
    """This process as a Kiln worker: what it built, its background threads, its state."""

    def __init__(self, settings: Settings, celery: Celery, exit: Callable[[int], None] = os._exit) -> None:
        self.settings, self.celery, self._exit = settings, celery, exit
        self.worker_id = new_worker_id()
        self.state = WorkerState.STARTING
        self.metrics: MetricsServer | None = None
        self.reaper: Reaper | None = None
        self.heartbeat: Heartbeat | None = None
        self._lock = threading.Lock()

    def queues(self) -> list[str]:
        """The shared queues from the settings, then this worker's direct queue (model affinity)."""
        return [q for q in self.settings.worker_queues.split(",") if q] + [direct_queue(self.worker_id)]

    def set_state(self, state: WorkerState) -> None:
        with self._lock:
            self.state = state
        logger.info("worker %s is %s", self.worker_id, state.name.lower())
        if self.heartbeat is not None:
            self.heartbeat.beat()

    @functools.cached_property
    def placement(self) -> Placement:
        chosen = choose_placement(self.settings.device, self.settings.dtype)
        if self.settings.torch_threads:
            import torch

            torch.set_num_threads(self.settings.torch_threads)
        logger.info("worker runs models on %s", chosen.describe())
        return chosen

    @functools.cached_property
    def catalog(self) -> Catalog:
        return load_catalog(self.settings)

    @functools.cached_property
    def runner(self) -> JobRunner:
        cache = PipelineCache[LoadedModel](self._load, self.settings.pipeline_cache_bytes)
        set_worker_id(self.worker_id)
        bind_pipeline_cache(cache, self.settings.pipeline_cache_bytes)
        bind_device_memory(str(self.placement.device))
        describe_worker(self.worker_id, str(self.placement.device), str(self.placement.dtype).removeprefix("torch."),
                        ",".join(self.queues()), self.settings.worker_slots)
        return JobRunner(self.settings, services.job_store(self.settings), services.storage(self.settings),
                         self.catalog, cache, self.worker_id)

    def _load(self, name: str) -> LoadedModel:
        from worker.pipelines import DiffusionPipeline

        spec = self.catalog.get(name)
        pipe = DiffusionPipeline.from_pretrained(spec.source, torch_dtype=self.placement.dtype,
                                                 revision=spec.revision, variant=spec.variant)
        rows = self.settings.max_batch_rows
        cap = call_cost_cap(pipe, rows, (spec.default_width, spec.default_height))  # no call outgrows a full batch
        return load_model(name, pipe.to(self.placement.device), rows, max_call_cost=cap)

    def start_metrics(self) -> None:
        """Serve /metrics, /livez and /healthz on KILN_METRICS_PORT from process start."""
        self.metrics = start_metrics_server(self.settings.metrics_port,
                                            health=redis_health(services.job_store(self.settings).redis))

    # Lifecycle --------------------------------------------------------------------------------
    def on_ready(self) -> None:
        """Celery consumes: start the reaper and heartbeat, preload, then report ready."""
        r = self.runner
        registry = WorkerRegistry(r.store.redis, self.settings.key_prefix)
        self.reaper = Reaper(r.store, self.celery, self.settings.reaper_interval_s, self.settings.max_attempts,
                             grace_s=1.0, registry=registry)
        self.heartbeat = Heartbeat(registry, StatusReporter(self))
        self.reaper.start()
        self.heartbeat.start()
        threading.Thread(target=self._preload_then_ready, name="kiln-preload", daemon=True).start()

    def _preload_then_ready(self) -> None:
        if self.settings.preload_default_model:
            name, started = self.catalog.default_name(), time.monotonic()
            try:
                self.runner.cache.get(name)
                logger.info("preloaded the default model %s in %.1fs", name, time.monotonic() - started)
            except Exception:  # a job asking for it reports the load error; the worker still serves
                logger.exception("could not preload the default model %s", name)
        if self.state is WorkerState.STARTING:
            self.set_state(WorkerState.READY)
            if self.metrics is not None:
                self.metrics.mark_ready()
            logger.info("worker %s ready; queues %s; %d job slots", self.worker_id, self.settings.worker_queues,
                        self.settings.worker_slots)

    def on_shutting_down(self) -> None:
        """Warm shutdown (SIGTERM): Celery stops taking jobs and lets running ones finish."""
        self.set_state(WorkerState.DRAINING)
        if self.reaper is not None:
            self.reaper.stop()
            moved = hand_back(self.reaper.broker, self.worker_id, self.reaper.resend)
            logger.info("handed %d waiting jobs back to the shared queues", moved)

    def on_shutdown(self) -> None:
        """Running jobs are done (or Celery gave up on them): say so and stop beating."""
        self.set_state(WorkerState.STOPPING)
        if self.heartbeat is not None:
            self.heartbeat.stop()

    # Jobs -------------------------------------------------------------------------------------
    def run_job(self, task: Task, job_id: str) -> str:
        """Run one delivery; hand the job back on faults that are not its own."""
        try:
            return self.runner.run(job_id)
        except InfrastructureUnavailable as exc:
            countdown = retry_countdown(task.request.retries)
            logger.warning("job %s sent again in %.0fs: %s", job_id, countdown, exc)
            raise task.retry(countdown=countdown) from None
        except DeviceBroken as exc:
            self.device_broken(job_id, exc)
            raise

    def device_broken(self, job_id: str, exc: BaseException) -> None:
        """The device is unusable: send the job (handed back by the runner) to its queue again
        and exit at once for the supervisor to start a fresh process. Other running jobs lose
        their lease and are requeued by another worker's reaper."""
        logger.critical("device fault in job %s (%s); this worker exits to be replaced", job_id, exc)
        with self._lock:
            self.state = WorkerState.STOPPING
        try:
            job = self.runner.store.get(job_id)
            if job is not None and not job.status.terminal:
                enqueue_job(self.celery, job_id, job.queue)
            if self.heartbeat is not None:
                self.heartbeat.beat()
        except Exception:  # the reaper of another worker requeues it once the lease expires
            logger.exception("could not requeue job %s before exiting", job_id)
        for handler in logging.getLogger().handlers:
            handler.flush()
        self._exit(EXIT_DEVICE_BROKEN)


class StatusReporter:
    """Builds the worker's `WorkerStatus`: its state, models, jobs; steps/s since the last report."""

    def __init__(self, process: WorkerProcess) -> None:
        self.process = process
        self.runner = process.runner
        self.base = base_status(self.runner.worker_id, process.placement.describe(), process.queues(),
                                process.settings.worker_slots)
        self._last = (time.monotonic(), 0)

    def __call__(self) -> WorkerStatus:
        loaded: list[LoadedModel] = self.runner.cache.values()
        steps = sum(m.batcher.stats.job_steps for m in loaded)
        now = time.monotonic()
        then, before = self._last
        self._last = (now, steps)
        status = WorkerStatus(**{**self.base.__dict__})
        status.state = self.process.state.value
        status.models = [m.name for m in loaded]
        status.memory_bytes = self.runner.cache.used_bytes()
        status.memory_budget_bytes = self.process.settings.pipeline_cache_bytes
        status.running_jobs = self.runner.running_jobs()
        status.batch_size = max((m.batcher.stats.last_batch_jobs for m in loaded), default=0)
        status.steps_per_s = round((steps - before) / max(now - then, 1e-6), 3)
        return status


settings = get_settings()
celery = make_celery(settings)
process = WorkerProcess(settings, celery)


# max_retries=None: a job handed back for an infrastructure fault is sent again until it runs
# (Celery reads None in retry() itself as "the task's default, 3").
@celery.task(name=RUN_JOB_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def run_job(self: Task, job_id: str) -> str:
    return process.run_job(self, job_id)


worker_ready.connect(lambda **_: process.on_ready(), weak=False)
worker_shutting_down.connect(lambda **_: process.on_shutting_down(), weak=False)
worker_shutdown.connect(lambda **_: process.on_shutdown(), weak=False)
