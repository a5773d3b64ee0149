"""Model affinity: jobs go to a worker holding their model; dead workers' direct queues come back."""

from __future__ import annotations

import time

import redis

from shared.affinity import direct_queue, hand_back, hand_back_dead, job_id_of, route
from shared.celery_app import enqueue_job, make_celery
from shared.settings import load_settings
from shared.workers import WorkerRegistry, WorkerStatus


def status(worker_id: str, models: list[str], running: int = 0, slots: int = 2) -> WorkerStatus:
    return WorkerStatus(id=worker_id, host="h", pid=1, device="cpu", queues=[], slots=slots,
                        started_at=time.time(), models=models, running_jobs=[f"j{i}" for i in range(running)])


def test_route_prefers_a_holder_with_room(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    registry = WorkerRegistry(client)
    registry.announce(status("w1", ["a"], running=2), ttl_s=10)  # holds a, but full
    registry.announce(status("w2", ["a", "b"], running=1), ttl_s=10)
    registry.announce(status("w3", ["c"]), ttl_s=10)
    assert route(registry, client, "a", "kiln.default") == direct_queue("w2")
    assert route(registry, client, "c", "kiln.default") == direct_queue("w3")
    assert route(registry, client, "zzz", "kiln.default") == "kiln.default"  # nobody holds it
    client.rpush(direct_queue("w2"), "x")  # a job already waiting there takes the last slot
    assert route(registry, client, "a", "kiln.default") == "kiln.default"


def test_dead_workers_direct_queue_is_handed_back(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    celery = make_celery(load_settings(redis_url=redis_url))
    enqueue_job(celery, "job_1", direct_queue("dead"))
    enqueue_job(celery, "job_2", direct_queue("dead"))
    [_, raw] = client.lrange(direct_queue("dead"), 0, -1)  # kombu pushes on the left
    assert job_id_of(raw) == "job_1"
    registry = WorkerRegistry(client)
    registry.announce(status("dead", ["a"]), ttl_s=0.2)
    registry.announce(status("alive", ["a"]), ttl_s=10)
    enqueue_job(celery, "job_3", direct_queue("alive"))
    time.sleep(0.3)
    resent: list[str] = []
    assert hand_back_dead(registry, client, resent.append) == 2
    assert resent == ["job_1", "job_2"] and client.llen(direct_queue("dead")) == 0
    assert client.llen(direct_queue("alive")) == 1  # a live worker keeps its queue
    assert hand_back(client, "alive", resent.append) == 1 and resent[-1] == "job_3"
