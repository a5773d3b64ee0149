"""Model affinity: send a job to a worker that already holds its model.

Every worker consumes the shared queues and a direct queue of its own (`kiln.worker.<id>`). When
the dispatcher sends a job, it picks a live worker that holds the job's model (from the workers'
heartbeats) and has a free slot, and sends the job to that worker's direct queue; when none does,
the job goes to the shared queue, where any worker with room takes it and loads the model.

A direct queue outlives its worker only briefly: a worker hands its direct queue back to the shared
queues when it shuts down, and reapers do the same for a worker whose heartbeat stopped.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Callable

import redis

from shared.workers import WorkerRegistry, WorkerState

logger = logging.getLogger(__name__)

DIRECT_PREFIX = "kiln.worker."


def direct_queue(worker_id: str) -> str:
    return f"{DIRECT_PREFIX}{worker_id}"


def route(registry: WorkerRegistry, broker: redis.Redis, model: str, shared_queue: str) -> str:
    """The queue for a job of `model`: a holder's direct queue if one has room, else the shared one."""
    best, best_room = None, 0
    for worker in registry.list():
        if worker.stale or worker.state != WorkerState.READY or model not in worker.models:
            continue
        room = worker.slots - len(worker.running_jobs) - broker.llen(direct_queue(worker.id))
        if room > best_room:
            best, best_room = worker, room
    return direct_queue(best.id) if best else shared_queue


def job_id_of(message: str | bytes) -> str | None:
    """The job id a raw Celery (protocol 2, JSON) message on a Redis list carries."""
    try:
        envelope = json.loads(message)
        args = json.loads(base64.b64decode(envelope["body"]))[0]
        return args[0]
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def hand_back(broker: redis.Redis, worker_id: str, resend: Callable[[str], None]) -> int:
    """Move every job waiting in `worker_id`'s direct queue back through `resend`; returns how many."""
    queue, moved = direct_queue(worker_id), 0
    while (raw := broker.rpop(queue)) is not None:  # kombu pushes left and pops right: oldest first
        job_id = job_id_of(raw)
        if job_id is None:
            logger.error("dropping an unreadable message from %s", queue)
            continue
        resend(job_id)
        moved += 1
    return moved


def hand_back_dead(registry: WorkerRegistry, broker: redis.Redis, resend: Callable[[str], None]) -> int:
    """Hand back the direct queues of workers whose heartbeat stopped."""
    return sum(hand_back(broker, w.id, resend) for w in registry.list() if w.stale)
