"""Worker status in Redis, refreshed by each worker's heartbeat and read by the dashboard.

Each worker writes `<prefix>:worker:<id>` (JSON, expiring after a few missed heartbeats) and its
last-seen time in the sorted set `<prefix>:workers`. A worker whose record expired but who is still
in the set is stale: it stopped heartbeating (crashed, or its machine went away).
"""

from __future__ import annotations

import enum
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from shared.redis_keys import DEFAULT_PREFIX, RedisKeys


class WorkerState(str, enum.Enum):
    """A worker's lifecycle state, as its heartbeat reports it (`WorkerStatus.state`).

    READY is reported as "online": the name the dashboard, affinity routing and `/metrics` know.
    """

    STARTING = "starting"
    READY = "online"
    DRAINING = "draining"
    STOPPING = "stopping"


@dataclass
class WorkerStatus:
    id: str
    host: str
    pid: int
    device: str
    queues: list[str]
    slots: int
    started_at: float
    state: str = WorkerState.READY.value  # a WorkerState value (plain text in the stored JSON)
    models: list[str] = field(default_factory=list)
    memory_bytes: int = 0
    memory_budget_bytes: int = 0
    running_jobs: list[str] = field(default_factory=list)
    batch_size: int = 0
    steps_per_s: float = 0.0
    heartbeat_at: float = 0.0
    stale: bool = False


class WorkerRegistry:
    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        self.redis, self.names = client, RedisKeys(prefix)

    def _key(self, worker_id: str) -> str:
        return self.names.worker(worker_id)

    @property
    def _index(self) -> str:
        return self.names.workers

    def announce(self, status: WorkerStatus, ttl_s: float) -> None:
        status.heartbeat_at = time.time()
        pipe = self.redis.pipeline()
        pipe.set(self._key(status.id), json.dumps(asdict(status)), px=int(ttl_s * 1000))
        pipe.zadd(self._index, {status.id: status.heartbeat_at})
        pipe.execute()

    def remove(self, worker_id: str) -> None:
        self.redis.delete(self._key(worker_id))
        self.redis.zrem(self._index, worker_id)

    def get(self, worker_id: str) -> WorkerStatus | None:
        raw = self.redis.get(self._key(worker_id))
        if raw is not None:
            return WorkerStatus(**json.loads(raw))
        seen = self.redis.zscore(self._index, worker_id)
        if seen is None:
            return None
        return WorkerStatus(id=worker_id, host="?", pid=0, device="?", queues=[], slots=0, started_at=0.0,
                            state="stale", heartbeat_at=seen, stale=True)

    def list(self, forget_after_s: float = 24 * 3600) -> list[WorkerStatus]:
        """Every worker seen within `forget_after_s`, live ones first, newest heartbeat first."""
        self.redis.zremrangebyscore(self._index, "-inf", time.time() - forget_after_s)
        ids = self.redis.zrevrange(self._index, 0, 999)
        workers = [w for w in (self.get(i if isinstance(i, str) else i.decode()) for i in ids) if w]
        return sorted(workers, key=lambda w: (w.stale, -w.heartbeat_at))

    def holders(self, model: str) -> list[str]:
        """Ids of live workers holding `model` loaded."""
        return [w.id for w in self.list() if not w.stale and model in w.models]

    def as_dicts(self) -> list[dict[str, Any]]:
        return [asdict(w) for w in self.list()]
