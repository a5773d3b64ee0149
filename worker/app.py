"""The worker process: a Celery app whose one task runs a job by id.

One process per GPU. Everything heavy (pipeline cache, runner) is built once per process, on
first use; a reaper thread requeues jobs whose worker died.
"""

from __future__ import annotations

import functools
import logging

from celery.signals import worker_ready, worker_shutting_down

from shared import services
from shared.catalog import load_catalog
from shared.celery_app import RUN_JOB_TASK, make_celery
from shared.settings import get_settings
from worker.device import choose_placement
from worker.execute import load_model
from worker.pipeline_cache import PipelineCache
from worker.reaper import Reaper
from worker.runner import JobRunner, new_worker_id

logger = logging.getLogger("kiln.worker")
settings = get_settings()
celery = make_celery(settings)


@functools.lru_cache(maxsize=1)
def runner() -> JobRunner:
    placement = choose_placement(settings.device, settings.dtype)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    catalog = load_catalog(settings)
    logger.info("worker runs models on %s", placement.describe())

    def load(name: str):
        from worker.pipelines import DiffusionPipeline

        spec = catalog.get(name)
        pipe = DiffusionPipeline.from_pretrained(
            spec.source, torch_dtype=placement.dtype, revision=spec.revision, variant=spec.variant
        )
        return load_model(name, pipe.to(placement.device), settings.max_batch_rows)

    cache = PipelineCache(load, settings.pipeline_cache_bytes)
    return JobRunner(settings, services.job_store(settings), services.storage(settings), catalog, cache,
                     new_worker_id())


@celery.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str:
    return runner().run(job_id)


_reaper: Reaper | None = None


@worker_ready.connect
def _start_reaper(**_: object) -> None:
    global _reaper
    r = runner()
    _reaper = Reaper(r.store, celery, settings.reaper_interval_s, settings.max_attempts, grace_s=1.0)
    _reaper.start()
    logger.info("worker %s ready; queues %s", r.worker_id, settings.worker_queues)


@worker_shutting_down.connect
def _stop_reaper(**_: object) -> None:
    if _reaper is not None:
        _reaper.stop()
