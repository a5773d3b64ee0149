"""The worker's metrics endpoint: hooks move the histograms, the cache is read at scrape time,
health follows readiness and Redis."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from prometheus_client.parser import text_string_to_metric_families

from shared import metrics
from shared.jobs.record import Status
from shared.localstack import free_port
from worker.metrics import redis_health, start_metrics_server
from worker.pipeline_cache import PipelineCache


@pytest.fixture
def server():
    srv = start_metrics_server(free_port(), device="cpu", host="127.0.0.1")
    yield srv
    srv.stop()


def get(srv, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(srv) -> dict[tuple[str, tuple], float]:
    status, body = get(srv, "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_job_hooks_move_histograms_and_counters(server):
    job = SimpleNamespace(model="m-hooks", created_at=time.time() - 2.0, started_at=None)
    before = scrape(server)
    metrics.describe_worker("w-1", "cpu", "float32", "kiln.default", slots=8)
    metrics.observe_job_started(job)
    during = scrape(server)
    assert value(during, "kiln_worker_running_jobs") - value(before, "kiln_worker_running_jobs") == 1
    assert value(during, "kiln_worker_slots") == 8
    assert value(during, "kiln_worker_info", worker_id="w-1", device="cpu", dtype="float32",
                 queues="kiln.default") == 1
    metrics.observe_job_finished(job, Status.SUCCEEDED, {"load_s": 0.3, "total_s": 1.5})
    after = scrape(server)
    assert value(after, "kiln_worker_running_jobs") == value(before, "kiln_worker_running_jobs")
    wait_count = value(after, "kiln_job_queue_wait_seconds_count", model="m-hooks")
    assert wait_count - value(before, "kiln_job_queue_wait_seconds_count", model="m-hooks") == 1
    assert value(after, "kiln_job_queue_wait_seconds_sum", model="m-hooks") >= 2.0
    # 1.5 s falls in the 2.5 s bucket but not the 1 s one.
    assert value(after, "kiln_job_run_seconds_bucket", model="m-hooks", status="succeeded", le="2.5") == 1
    assert value(after, "kiln_job_run_seconds_bucket", model="m-hooks", status="succeeded", le="1.0") == 0
    assert value(after, "kiln_worker_jobs_finished_total", model="m-hooks", status="succeeded") == 1
    assert value(after, "kiln_job_load_seconds_count", model="m-hooks") == 1


def test_steps_count_job_steps_and_batches(server):
    before = scrape(server)
    metrics.observe_step(4, 0.5)
    metrics.observe_step(1, 0.1)
    after = scrape(server)
    assert value(after, "kiln_denoise_steps_total") - value(before, "kiln_denoise_steps_total") == 5
    assert value(after, "kiln_denoise_model_calls_total") - value(before, "kiln_denoise_model_calls_total") == 2
    assert value(after, "kiln_denoise_batch_size_count") - value(before, "kiln_denoise_batch_size_count") == 2
    assert value(after, "kiln_denoise_steps_per_second") == pytest.approx(10.0)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        metrics.observe_step(0, 0.1)


def test_pipeline_cache_counters_read_at_scrape(server):
    cache = PipelineCache(lambda name: SimpleNamespace(components={}), budget_bytes=1024)
    metrics.bind_pipeline_cache(cache, budget_bytes=1024)
    cache.get("a")
    cache.get("a")
    cache.get("b")
    samples = scrape(server)
    assert value(samples, "kiln_pipeline_cache_hits_total") == 1
    assert value(samples, "kiln_pipeline_cache_loads_total") == 2
    assert value(samples, "kiln_pipeline_cache_models") == 2
    assert value(samples, "kiln_pipeline_cache_budget_bytes") == 1024


def test_no_device_memory_on_cpu(server):
    assert not any(name.startswith("kiln_device_memory") for name, _ in scrape(server))


def test_health_follows_readiness_and_redis(redis_url):
    alive = redis.Redis.from_url(redis_url)
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    servers = [start_metrics_server(free_port(), health=redis_health(client), host="127.0.0.1")
               for client in (alive, dead)]
    try:
        for srv in servers:
            status, body = get(srv, "/healthz")
            assert status == 503 and "not ready" in json.loads(body)["reason"]
            assert get(srv, "/livez")[0] == 200
            srv.mark_ready()
        assert get(servers[0], "/healthz")[0] == 200
        status, body = get(servers[1], "/healthz")
        assert status == 503 and "ConnectionError" in json.loads(body)["reason"]
        assert get(servers[0], "/nope")[0] == 404
    finally:
        for srv in servers:
            srv.stop()


def test_port_zero_or_taken_serves_nothing(server):
    assert start_metrics_server(0) is None
    assert start_metrics_server(server.port, host="127.0.0.1") is None
