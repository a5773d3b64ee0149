"""The worker process object: its lifecycle states as the heartbeat reports them, a handed-back
job sent again with backoff, and a broken device ending the process after requeueing the job."""

from __future__ import annotations

import pytest

from shared.celery_app import make_celery
from shared.jobs.store import JobStore
from shared.settings import load_settings
from shared.workers import WorkerRegistry
from shared.workers import WorkerState
from worker.app import EXIT_DEVICE_BROKEN, StatusReporter, WorkerProcess, retry_countdown
from worker.faults import DeviceBroken, InfrastructureUnavailable
from worker.heartbeat import Heartbeat

PARAMS = {"model": "m", "task": "unconditional", "steps": 2, "seed": 1, "num_images": 1}


class Runner:
    def __init__(self, store, error=None):
        self.store, self.error, self.worker_id = store, error, "w1"
        self.cache = type("C", (), {"values": lambda s: [], "used_bytes": lambda s: 0})()

    def run(self, job_id):
        if self.error:
            raise self.error
        return "succeeded"

    def running_jobs(self):
        return []


class Task:
    class request:
        retries = 3

    def retry(self, countdown):
        self.countdown = countdown
        return RuntimeError("retry")


@pytest.fixture
def process(redis_url):
    settings = load_settings(redis_url=redis_url, device="cpu")
    exits = []
    proc = WorkerProcess(settings, make_celery(settings), exit=exits.append)
    proc.exits = exits
    proc.store = JobStore.from_url(redis_url)
    return proc


def test_states_reach_the_heartbeat(process):
    process.runner = Runner(process.store)
    registry = WorkerRegistry(process.store.redis)
    process.heartbeat = Heartbeat(registry, StatusReporter(process))
    assert process.state is WorkerState.STARTING
    process.set_state(WorkerState.STARTING)
    assert registry.get("w1").state == "starting"
    for state, wire in [(WorkerState.READY, "online"), (WorkerState.DRAINING, "draining"),
                        (WorkerState.STOPPING, "stopping")]:
        process.set_state(state)
        assert registry.get("w1").state == wire


def test_an_infrastructure_fault_sends_the_job_again_with_backoff(process):
    process.runner = Runner(process.store, InfrastructureUnavailable("redis down"))
    task = Task()
    with pytest.raises(RuntimeError, match="retry"):
        process.run_job(task, "j1")
    assert task.countdown == 8.0 and process.exits == []
    assert [retry_countdown(n) for n in (0, 1, 5, 10)] == [1.0, 2.0, 30.0, 30.0]


def test_the_task_retries_without_limit():
    from worker.app import run_job

    assert run_job.max_retries is None


def test_a_device_fault_requeues_the_job_and_exits(process, monkeypatch):
    sent = []
    monkeypatch.setattr("worker.app.enqueue_job", lambda celery, job_id, queue: sent.append((job_id, queue)))
    process.store.create("j1", "owner", PARAMS, "kiln.default")
    process.runner = Runner(process.store, DeviceBroken("CUDA error: device-side assert triggered"))
    with pytest.raises(DeviceBroken):
        process.run_job(Task(), "j1")
    assert sent == [("j1", "kiln.default")]
    assert process.exits == [EXIT_DEVICE_BROKEN] and process.state is WorkerState.STOPPING
