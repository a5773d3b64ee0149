"""`GET /metrics` on the API: Prometheus text whose values follow the job store and the queues."""

from __future__ import annotations

import time

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.blueprints import metrics as metrics_blueprint
from shared.fairqueue import FairQueue
from shared.jobs.record import Status
from shared.jobs.store import JobStore
from shared.settings import load_settings
from shared.workers import WorkerRegistry, WorkerStatus

PARAMS = {"model": "kiln-ddpm-tiny", "task": "unconditional", "seed": 1}


def make_client(redis_url, tmp_path, auth: str):
    settings = load_settings(redis_url=redis_url, storage="local", storage_root=tmp_path / "outputs",
                             models_dir=tmp_path / "models", auth=auth)
    app = create_app(settings)
    if "metrics" not in app.blueprints:  # until create_app registers it
        app.register_blueprint(metrics_blueprint.bp)
    return app.test_client()


@pytest.fixture
def client(redis_url, tmp_path):
    return make_client(redis_url, tmp_path, "disabled")


@pytest.fixture
def store(redis_url):
    return JobStore.from_url(redis_url)


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def jobs(samples, status: str) -> float:
    return samples[("kiln_jobs", (("status", status),))]


def depth(samples, queue: str = "kiln.default") -> float:
    return samples[("kiln_queue_depth", (("queue", queue),))]


def test_empty_cluster_reads_zero(client):
    samples = scrape(client)
    assert samples[("kiln_redis_up", ())] == 1
    assert all(jobs(samples, status.value) == 0 for status in Status)
    assert depth(samples) == 0
    assert samples[("kiln_queue_waiting", (("queue", "kiln.default"),))] == 0
    assert samples[("kiln_oldest_queued_job_age_seconds", ())] == 0


def test_workers_are_counted_by_heartbeat_state(client, redis_url):
    registry = WorkerRegistry(redis.Redis.from_url(redis_url, decode_responses=True), "kiln")
    for n, state in enumerate(["online", "online", "stopping"]):
        registry.announce(WorkerStatus(id=f"w{n}", host="h", pid=n, device="cpu", queues=["kiln.default"],
                                       slots=8, started_at=time.time(), state=state), ttl_s=30)
    registry.announce(WorkerStatus(id="gone", host="h", pid=9, device="cpu", queues=[], slots=1,
                                   started_at=time.time()), ttl_s=0.05)
    time.sleep(0.1)  # its record expires; its index entry stays: stale
    samples = scrape(client)
    counts = {state: samples[("kiln_workers", (("state", state),))] for state in ("online", "stopping", "stale")}
    assert counts == {"online": 2, "stopping": 1, "stale": 1}


def test_fair_queue_backlog_is_counted_per_queue(client, redis_url):
    fair = FairQueue(redis.Redis.from_url(redis_url, decode_responses=True), "kiln")
    fair.push("kiln.default", "key-a", "job1")
    fair.push("kiln.default", "key-b", "job2")
    fair.push("kiln.big", "key-a", "job3")
    samples = scrape(client)
    assert samples[("kiln_queue_waiting", (("queue", "kiln.default"),))] == 2
    assert samples[("kiln_queue_waiting", (("queue", "kiln.big"),))] == 1


def test_values_follow_jobs_through_their_states(client, store, redis_url):
    broker = redis.Redis.from_url(redis_url)
    for n in range(3):
        store.create(f"job{n}", "local", PARAMS, "kiln.default")
        broker.lpush("kiln.default", f"message-{n}")  # Celery's Redis transport: one list per queue
    samples = scrape(client)
    assert (jobs(samples, "queued"), jobs(samples, "running"), depth(samples)) == (3, 0, 3)

    broker.rpop("kiln.default")
    assert store.start("job0", "w1", "tok0", 30, 3).started
    time.sleep(0.01)
    samples = scrape(client)
    assert (jobs(samples, "queued"), jobs(samples, "running"), depth(samples)) == (2, 1, 2)
    assert samples[("kiln_oldest_queued_job_age_seconds", ())] > 0

    assert store.finish("job0", "tok0", Status.SUCCEEDED)
    assert store.cancel("job1") == "canceled"
    samples = scrape(client)
    assert [jobs(samples, s) for s in ("queued", "running", "succeeded", "canceled", "failed")] == [1, 0, 1, 1, 0]


def test_redis_down_still_answers(client, store, redis_url, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise redis.ConnectionError("connection refused")

    monkeypatch.setattr(JobStore, "count", refuse)
    samples = scrape(client)
    assert samples[("kiln_redis_up", ())] == 0
    assert not any(name == "kiln_jobs" for name, _ in samples)

