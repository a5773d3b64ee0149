"""Hands on jobs whose worker died: a running job with an expired lease is requeued (or, after
`max_attempts` starts, failed). Every worker runs one; the store's script makes it safe for
several to sweep at once."""

from __future__ import annotations

import logging
import threading

import redis
from celery import Celery

from shared.affinity import hand_back_dead

from shared.celery_app import enqueue_job
from shared.jobs.record import Status
from shared.jobs.store import JobStore
from shared.workers import WorkerRegistry

logger = logging.getLogger(__name__)


def sweep(store: JobStore, celery: Celery, max_attempts: int, grace_s: float) -> list[str]:
    """One pass over running jobs; returns the ids it requeued."""
    requeued = []
    for job_id in store.ids(Status.RUNNING, limit=1000):
        if store.lease_holder(job_id) is not None:
            continue
        answer = store.reap(job_id, max_attempts, grace_s)
        if answer == "requeued":
            job = store.get(job_id)
            enqueue_job(celery, job_id, job.queue)
            requeued.append(job_id)
            logger.warning("job %s lost its worker; requeued (attempt %d so far)", job_id, job.attempts)
        elif answer in ("failed", "canceled"):
            logger.error("job %s lost its worker and ended %s", job_id, answer)
    return requeued


class Reaper(threading.Thread):
    """Requeues jobs of dead workers, and hands back the direct queues of dead workers."""

    def __init__(self, store: JobStore, celery: Celery, interval_s: float, max_attempts: int, grace_s: float,
                 registry: WorkerRegistry | None = None):
        super().__init__(name="kiln-reaper", daemon=True)
        self.store, self.celery, self.registry = store, celery, registry
        self.interval_s, self.max_attempts, self.grace_s = interval_s, max_attempts, grace_s
        self.broker = redis.Redis.from_url(celery.conf.broker_url)
        self._stop = threading.Event()

    def resend(self, job_id: str) -> None:
        """Send a waiting job to its shared queue again (the record decides if it still runs)."""
        job = self.store.get(job_id)
        if job is not None and not job.status.terminal:
            enqueue_job(self.celery, job_id, job.queue)

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                sweep(self.store, self.celery, self.max_attempts, self.grace_s)
                if self.registry is not None:
                    hand_back_dead(self.registry, self.broker, self.resend)
            except Exception:
                logger.warning("reaper sweep failed; retrying next interval", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
