"""Every Redis key name Kiln uses, spelled in this one place.

The names are data already stored in Redis (job records, indexes, API keys, quotas), so each
spelling here is a compatibility promise: change one and existing data is no longer found.
Lua scripts never spell a name: they receive keys (or, for keys chosen at run time inside the
script, a key stem ending in `:`) from these methods through KEYS and ARGV.

Layout under the prefix `p` (default `kiln`):

    p:job:<id>                    hash: the job record          (shared.jobs.store)
    p:lease:<id>                  string: the running job's lease token
    p:events:<id>                 pub/sub channel of the job's events
    p:jobs:all                    sorted set of job ids by creation time
    p:jobs:status:<status>        the same, one per status
    p:jobs:owner:<owner>          the same, one per owner
    p:key:<key id>                hash: an API key              (shared.auth)
    p:keyhash:<sha256>            the key id of a secret
    p:keys                        sorted set of key ids by creation time
    p:bucket:<key id>             token bucket of submissions   (shared.ratelimit)
    p:active:<key id>             set of a key's unfinished job ids
    p:streams:<key id>            sorted set of a key's open event streams
    p:idem:<key id>:<sha256>      an Idempotency-Key's job      (shared.idempotency)
    p:fair:…                      fair queueing                 (shared.fairqueue)
    p:webhooks:…, p:webhook:…     webhook delivery              (shared.webhooks)
    p:worker:<id>, p:workers      worker heartbeats             (shared.workers)
    p:admin:…                     dashboard secret and sessions (api.admin.session)
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "kiln"


@dataclass(frozen=True)
class RedisKeys:
    """Key names under one prefix (`KILN_KEY_PREFIX`)."""

    prefix: str = DEFAULT_PREFIX

    # Jobs -------------------------------------------------------------------------------------
    def job(self, job_id: str) -> str:
        return f"{self.job_stem}{job_id}"

    @property
    def job_stem(self) -> str:
        """`job(id)` is this plus the id (for a script that reads records of ids it holds)."""
        return f"{self.prefix}:job:"

    def lease(self, job_id: str) -> str:
        return f"{self.prefix}:lease:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.events_stem}{job_id}"

    @property
    def events_stem(self) -> str:
        return f"{self.prefix}:events:"

    @property
    def events_pattern(self) -> str:
        """The pub/sub pattern matching every job's events channel."""
        return f"{self.events_stem}*"

    @property
    def all_jobs(self) -> str:
        return f"{self.prefix}:jobs:all"

    def status_index(self, status: str) -> str:
        return f"{self.status_stem}{status}"

    @property
    def status_stem(self) -> str:
        """`status_index(s)` is this plus the status (for scripts that move a job between them)."""
        return f"{self.prefix}:jobs:status:"

    def owner_index(self, owner: str) -> str:
        return f"{self.prefix}:jobs:owner:{owner}"

    @property
    def job_indexes_pattern(self) -> str:
        """A SCAN pattern matching every job index (all, per status, per owner)."""
        return f"{self.prefix}:jobs:*"

    # API keys and quotas ----------------------------------------------------------------------
    def api_key(self, key_id: str) -> str:
        return f"{self.prefix}:key:{key_id}"

    def api_key_by_hash(self, digest: str) -> str:
        return f"{self.prefix}:keyhash:{digest}"

    @property
    def api_keys(self) -> str:
        return f"{self.prefix}:keys"

    def bucket(self, key_id: str) -> str:
        return f"{self.prefix}:bucket:{key_id}"

    def active(self, key_id: str) -> str:
        return f"{self.prefix}:active:{key_id}"

    def streams(self, key_id: str) -> str:
        return f"{self.prefix}:streams:{key_id}"

    def idempotency(self, scope: str, digest: str) -> str:
        return f"{self.prefix}:idem:{scope}:{digest}"

    # Fair queueing ----------------------------------------------------------------------------
    @property
    def fair_queues(self) -> str:
        return f"{self.prefix}:fair:queues"

    def fair_ring(self, queue: str) -> str:
        return f"{self.prefix}:fair:{queue}:ring"

    def fair_wait(self, queue: str, key_id: str) -> str:
        return f"{self.fair_wait_stem(queue)}{key_id}"

    def fair_wait_stem(self, queue: str) -> str:
        """`fair_wait(queue, key)` is this plus the key id (the take script picks the key)."""
        return f"{self.prefix}:fair:{queue}:wait:"

    @property
    def fair_inflight(self) -> str:
        return f"{self.prefix}:fair:inflight"

    @property
    def fair_inflight_queue(self) -> str:
        return f"{self.prefix}:fair:inflight:queue"

    # Webhooks ---------------------------------------------------------------------------------
    @property
    def webhooks_watch(self) -> str:
        return f"{self.prefix}:webhooks:watch"

    @property
    def webhooks_due(self) -> str:
        return f"{self.prefix}:webhooks:due"

    def webhook_sent(self, job_id: str, event: str) -> str:
        return f"{self.prefix}:webhook:sent:{job_id}:{event}"

    def webhook_log(self, job_id: str) -> str:
        return f"{self.prefix}:webhook:log:{job_id}"

    # Workers and the dashboard ----------------------------------------------------------------
    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    @property
    def admin_secret(self) -> str:
        return f"{self.prefix}:admin:secret_key"

    def admin_session(self, sid: str) -> str:
        return f"{self.prefix}:admin:session:{sid}"
