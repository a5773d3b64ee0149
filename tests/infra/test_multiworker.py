"""Three worker processes on one machine: jobs spread over them, one is killed mid-run, nothing is
lost, and the API's and the workers' /metrics say so."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from shared.localstack import free_port, wait_until
from tests.fixtures.stack import Stack

pytestmark = pytest.mark.slow
MODEL = "kiln-ddpm-tiny"


def samples(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def worker_id(port: int) -> str:
    (labels,) = [dict(labels) for name, labels in samples(f"http://127.0.0.1:{port}/metrics")
                 if name == "kiln_worker_info"]
    return labels["worker_id"]


def finished(port: int) -> float:
    return sum(value for (name, labels), value in samples(f"http://127.0.0.1:{port}/metrics").items()
               if name == "kiln_worker_jobs_finished_total" and dict(labels)["status"] == "succeeded")


@pytest.fixture
def three_workers(stack_env, tmp_path):
    stack = Stack({**stack_env, "KILN_WORKER_SLOTS": "1"}, tmp_path)
    ports = []
    try:
        stack.start_api()
        logs = []
        for _ in range(3):  # started together: their imports overlap
            ports.append(free_port())
            stack.env["KILN_METRICS_PORT"] = str(ports[-1])
            logs.append(stack.logs / f"worker-{len(stack.procs)}.log")
            stack.start_worker(wait=False)
        for log in logs:
            wait_until(lambda: b"ready" in log.read_bytes(), 120, "a worker")
        yield stack, ports
    finally:
        stack.stop()


def test_jobs_spread_and_survive_a_killed_worker(three_workers):
    stack, ports = three_workers
    ids = {worker_id(port): (proc, port) for proc, port in zip(stack.workers, ports)}
    first = requests.post(f"{stack.url}/v1/jobs", json={"model": MODEL, "steps": 60, "scheduler": "ddpm", "seed": 0},
                          headers={"X-Request-ID": "multi-worker-1"}, timeout=10)
    assert first.status_code == 202 and first.headers["X-Request-ID"] == "multi-worker-1"
    jobs = [first.json()["id"]]
    jobs += [stack.submit(model=MODEL, steps=40, scheduler="ddpm", seed=n)["id"] for n in range(1, 6)]
    running = stack.wait(jobs[0], until=lambda j: j["status"] == "running" and j["progress"]["step"] >= 2)
    victim, victim_port = ids[running["worker"]]
    stack.kill(victim, signal.SIGKILL)

    done = [stack.wait(job_id, timeout=180) for job_id in jobs]
    assert [job["status"] for job in done] == ["succeeded"] * 6, stack.tail()
    assert done[0]["attempts"] == 2 and done[0]["worker"] != running["worker"]
    survivors = [port for port in ports if port != victim_port]
    counts = [finished(port) for port in survivors]
    assert sum(counts) >= 5 and all(count >= 1 for count in counts), counts  # spread over both

    api = samples(f"{stack.url}/metrics")
    assert api[("kiln_jobs", (("status", "succeeded"),))] == 6
    assert api[("kiln_jobs", (("status", "running"),))] == api[("kiln_jobs", (("status", "queued"),))] == 0
    with pytest.raises(OSError):
        samples(f"http://127.0.0.1:{victim_port}/metrics")
    # The request id travelled with the job: the workers' JSON lines about it carry it.
    lines = [json.loads(line) for line in stack.tail(limit=10**7).splitlines() if line.startswith("{")]
    about = [line for line in lines if line.get("job_id") == jobs[0] and "worker_id" in line]
    missing = [(line["logger"], line["msg"][:80]) for line in about if line.get("request_id") != "multi-worker-1"]
    assert about and not missing, missing
    assert requests.get(f"{stack.url}/metrics", timeout=5).headers["Content-Type"].startswith("text/plain")
