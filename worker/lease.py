"""A job's lease: held while its worker runs it, renewed in the background.

The lease is what stops a second delivery of the same job (Celery on Redis redelivers a task
that outlives the visibility timeout, even while its first worker is healthy) from running
beside the first. If the worker dies, the lease expires and a reaper hands the job on.
"""

from __future__ import annotations

import logging
import threading

from shared.jobs.store import JobStore

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews `job_id`'s lease every ttl/3 until stopped; `lost` is set if renewal fails."""

    def __init__(self, store: JobStore, job_id: str, token: str, ttl_s: float) -> None:
        self.store, self.job_id, self.token, self.ttl_s = store, job_id, token, ttl_s
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                renewed = self.store.renew_lease(self.job_id, self.token, self.ttl_s)
            except Exception:  # Redis blip: try again at the next tick, the TTL leaves room
                logger.warning("could not renew the lease of %s", self.job_id, exc_info=True)
                continue
            if not renewed:
                logger.error("lost the lease of %s; another worker may run it", self.job_id)
                self.lost.set()
                return
