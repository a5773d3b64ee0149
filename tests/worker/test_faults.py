"""How a worker sorts failures (`worker.faults`) and what the runner does with each kind: a
job's own failure ends it `failed`; Redis or storage being away is retried in place, then the job
goes back to `queued` with its attempt refunded; a device fault hands it back for the worker to exit."""

from __future__ import annotations

import time

import pytest
import redis
import torch
from PIL import Image

from shared.catalog import Catalog, ModelSpec
from shared.jobs.record import Status
from shared.jobs.store import JobStore
from shared.settings import load_settings
from shared.storage.errors import StorageUnavailable
from worker import runner as runner_module
from worker.faults import (DeviceBroken, InfrastructureUnavailable, is_device_fault, is_infrastructure_fault,
                           retry_infrastructure)
from worker.lease import hand_back_job
from worker.runner import JobRunner

SPEC = ModelSpec(name="m", source="/nowhere", family="ddpm", default_width=8, default_height=8, fixed_size=True,
                 default_steps=2, default_scheduler="ddim", default_guidance_scale=0.0)
PARAMS = {"model": "m", "task": "unconditional", "steps": 2, "seed": 1, "num_images": 1, "scheduler": "ddim"}


def test_classification():
    assert is_infrastructure_fault(redis.exceptions.ConnectionError("refused"))
    assert is_infrastructure_fault(StorageUnavailable("S3 endpoint is unreachable"))
    wrapped = RuntimeError("while loading")
    wrapped.__cause__ = redis.exceptions.TimeoutError("slow")
    assert is_infrastructure_fault(wrapped)
    assert not is_infrastructure_fault(ValueError("bad prompt"))
    assert is_device_fault(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert is_device_fault(RuntimeError("CUDA error: device-side assert triggered"))
    assert not is_device_fault(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_device_fault(RuntimeError("shape mismatch"))


def test_retry_infrastructure_retries_then_gives_up():
    calls, slept = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise redis.exceptions.ConnectionError("down")
        return "ok"

    assert retry_infrastructure(flaky, "x", budget_s=10, sleep=slept.append) == "ok"
    assert slept == [0.2, 0.4]

    def down():
        raise StorageUnavailable("down")

    with pytest.raises(InfrastructureUnavailable, match="uploading"):
        retry_infrastructure(down, "uploading", budget_s=0.5, sleep=time.sleep)
    with pytest.raises(ValueError):  # not an infrastructure fault: at once
        retry_infrastructure(lambda: (_ for _ in ()).throw(ValueError("no")), "x", budget_s=10)


class Storage:
    """In-memory storage whose `put` fails `failures` times first."""

    def __init__(self, failures: int = 0) -> None:
        self.failures, self.objects = failures, {}

    def put(self, key, data, content_type):
        if self.failures:
            self.failures -= 1
            raise StorageUnavailable("S3 endpoint is unreachable")
        self.objects[key] = data

    def get(self, key):
        return self.objects[key]


class Cache:
    def acquire(self, name):
        return object()

    def release(self, value):
        pass


@pytest.fixture
def make(redis_url, monkeypatch):
    store = JobStore.from_url(redis_url)
    settings = load_settings(redis_url=redis_url, infra_retry_s=1.0, lease_ttl_s=5.0, progress_interval_s=0)

    def build(run, storage=None, job_id="j1"):
        monkeypatch.setattr(runner_module, "run_params", run)
        store.create(job_id, "owner", PARAMS, "kiln.default")
        return store, JobRunner(settings, store, storage or Storage(), Catalog([SPEC]), Cache(), "w1")

    return build


def image(*_args, **_kwargs):
    return [Image.new("RGB", (8, 8))]


def test_a_storage_blip_is_retried_in_place(make):
    store, runner = make(image, Storage(failures=2))
    assert runner.run("j1") == "succeeded"
    assert store.get("j1").attempts == 1


def test_storage_down_hands_the_job_back_with_the_attempt_refunded(make):
    store, runner = make(image, Storage(failures=10**6))
    with pytest.raises(InfrastructureUnavailable):
        runner.run("j1")
    job = store.get("j1")
    assert (job.status, job.attempts, store.lease_holder("j1")) == (Status.QUEUED, 0, None)
    assert store.redis.hget(store.job_key("j1"), "infra_retries") == "1"


def test_a_redis_error_inside_the_pipeline_never_fails_the_job(make):
    def run(*_args, **_kwargs):
        raise redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6379")

    store, runner = make(run)
    with pytest.raises(InfrastructureUnavailable):
        runner.run("j1")
    assert store.get("j1").status is Status.QUEUED


def test_a_device_fault_hands_the_job_back_counting_the_attempt(make):
    def run(*_args, **_kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    store, runner = make(run)
    with pytest.raises(DeviceBroken):
        runner.run("j1")
    job = store.get("j1")
    assert (job.status, job.attempts, job.error) == (Status.QUEUED, 1, None)


def test_a_pipeline_bug_still_fails_the_job(make):
    def run(*_args, **_kwargs):
        raise ValueError("bad tensor")

    store, runner = make(run)
    assert runner.run("j1") == "failed"
    assert store.get("j1").error["code"] == "pipeline_failed"


def test_hand_back_needs_the_lease_token(redis_url):
    store = JobStore.from_url(redis_url)
    store.create("j2", "owner", PARAMS, "q")
    assert store.start("j2", "w", "token", 5.0, 3).started
    assert not hand_back_job(store, "j2", "another", refund_attempt=True)
    assert hand_back_job(store, "j2", "token", refund_attempt=False)
    assert store.get("j2").status is Status.QUEUED and store.get("j2").attempts == 1


def test_a_lost_lease_writes_nothing(redis_url, monkeypatch):
    store = JobStore.from_url(redis_url)
    settings = load_settings(redis_url=redis_url, lease_ttl_s=0.6, infra_retry_s=1.0)

    def run(*_args, **_kwargs):  # the lease expires under us (Redis was away longer than its TTL)
        store.redis.delete(store.lease_key("j3"))
        time.sleep(0.5)
        return image()

    monkeypatch.setattr(runner_module, "run_params", run)
    store.create("j3", "owner", PARAMS, "q")
    runner = JobRunner(settings, store, Storage(), Catalog([SPEC]), Cache(), "w1")
    assert runner.run("j3") == "lease_lost"
    job = store.get("j3")
    assert job.status is Status.RUNNING and job.error is None  # the reaper requeues it
