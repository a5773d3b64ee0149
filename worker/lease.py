"""A job's lease: held while its worker runs it, renewed in the background.

The lease is what stops a second delivery of the same job (Celery on Redis redelivers a task
that outlives the visibility timeout, even while its first worker is healthy) from running
beside the first. If the worker dies, the lease expires and a reaper hands the job on.
"""

from __future__ import annotations

import logging
import threading

from shared.jobs.scripts import _MOVE
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


# KEYS: job hash, lease. ARGV[4] token, ARGV[5] "1" when the attempt is refunded (the job never
# had a fair run: infrastructure fault). Puts a running job this token holds back to `queued`.
HAND_BACK = _MOVE + """
local statuses, id, now = ARGV[1], ARGV[2], ARGV[3]
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if redis.call('GET', KEYS[2]) ~= ARGV[4] then return 0 end
redis.call('DEL', KEYS[2])
move(statuses, id, KEYS[1], 'running', 'queued', now)
redis.call('HSET', KEYS[1], 'worker', '', 'progress_step', 0, 'phase', '')
if ARGV[5] == '1' then
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
  redis.call('HINCRBY', KEYS[1], 'infra_retries', 1)
end
return 1
"""


def hand_back_job(store: JobStore, job_id: str, token: str, refund_attempt: bool) -> bool:
    """Give up a running job this token leases: it goes back to `queued` (lease dropped) for the
    caller to enqueue again. `refund_attempt` takes back the attempt `JobStore.start` counted, for
    faults that were not the job's (so they never count towards `KILN_MAX_ATTEMPTS`). Returns
    False when the job was no longer ours (finished, or its lease expired and was taken)."""
    script = store.redis.register_script(HAND_BACK)
    return bool(store._call(script, job_id, token, "1" if refund_attempt else "0"))
