"""The job record's state machine on a real Redis: transitions, leases, cancel, reaping."""

from __future__ import annotations

import threading
import time

import pytest

from shared.ids import is_job_id, new_job_id
from shared.jobs.record import Output, Status
from shared.jobs.store import JobStore

PARAMS = {"model": "m", "task": "unconditional", "steps": 3, "seed": 1}


@pytest.fixture
def store(redis_url):
    return JobStore.from_url(redis_url, retention_s=3600)


@pytest.fixture
def job_id(store):
    job_id = new_job_id()
    store.create(job_id, "alice", PARAMS, "kiln.default")
    return job_id


def test_ids_are_unique_and_time_ordered():
    ids = [new_job_id() for _ in range(200)]
    assert len(set(ids)) == 200 and all(is_job_id(i) for i in ids)
    assert ids[0][:16] <= ids[-1][:16]


def test_create_indexes_and_refuses_duplicates(store, job_id):
    job = store.get(job_id)
    assert job.status is Status.QUEUED and job.owner == "alice" and job.params == PARAMS
    assert store.ids(Status.QUEUED) == [job_id] and store.count() == 1
    with pytest.raises(ValueError):
        store.create(job_id, "bob", PARAMS, "kiln.default")


def test_happy_path_moves_indexes(store, job_id):
    assert store.start(job_id, "w1", "tok", 5, 3).started
    assert store.ids(Status.QUEUED) == [] and store.ids(Status.RUNNING) == [job_id]
    assert store.progress(job_id, "tok", 1, 3) == "ok"
    out = Output(0, f"outputs/{job_id}/0.png", 10, 1, "image/png", 32, 32)
    assert store.finish(job_id, "tok", Status.SUCCEEDED, outputs=[out], timings={"model_s": 1.0})
    job = store.get(job_id)
    assert job.status is Status.SUCCEEDED and job.outputs == [out] and job.attempts == 1
    assert job.started_at <= job.finished_at and job.timings == {"model_s": 1.0}
    assert store.ids(Status.RUNNING) == [] and store.ids(Status.SUCCEEDED) == [job_id]
    assert store.lease_holder(job_id) is None


def test_terminal_state_never_changes(store, job_id):
    store.start(job_id, "w1", "tok", 5, 3)
    store.finish(job_id, "tok", Status.SUCCEEDED)
    assert store.start(job_id, "w2", "tok2", 5, 3).outcome == "terminal"
    assert not store.finish(job_id, "tok", Status.FAILED, error={"code": "x", "message": "y"})
    assert store.cancel(job_id) == "succeeded"
    assert store.progress(job_id, "tok", 2, 3) == "gone"
    assert store.reap(job_id, 3, 0) == "skip"
    assert store.get(job_id).status is Status.SUCCEEDED


def test_a_live_lease_blocks_a_second_start(store, job_id):
    assert store.start(job_id, "w1", "tok1", 5, 3).started
    second = store.start(job_id, "w2", "tok2", 5, 3)
    assert (second.outcome, second.detail) == ("leased", "tok1")
    assert store.get(job_id).attempts == 1
    assert not store.finish(job_id, "tok2", Status.SUCCEEDED)  # not the holder


def test_only_one_of_many_concurrent_starts_wins(store, job_id):
    results = []
    barrier = threading.Barrier(8)

    def start(n):
        barrier.wait()
        results.append(store.start(job_id, f"w{n}", f"tok{n}", 5, 3).outcome)

    threads = [threading.Thread(target=start, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["leased"] * 7 + ["started"]


def test_lease_renewal_and_expiry_then_reap(store, job_id):
    store.start(job_id, "w1", "tok", 0.3, 3)
    assert store.renew_lease(job_id, "tok", 0.3)
    assert not store.renew_lease(job_id, "other", 0.3)
    assert store.reap(job_id, 3, 0) == "skip"  # lease alive
    time.sleep(0.45)
    assert store.reap(job_id, 3, 0) == "requeued"
    job = store.get(job_id)
    assert job.status is Status.QUEUED and store.ids(Status.QUEUED) == [job_id]
    assert not store.renew_lease(job_id, "tok", 0.3)  # the old holder learns it lost the job
    assert store.start(job_id, "w2", "tok2", 5, 3).detail == "2"


def test_attempts_are_capped(store, job_id):
    for attempt in range(2):
        assert store.start(job_id, "w", f"t{attempt}", 0.05, 2).started
        time.sleep(0.1)
        assert store.reap(job_id, 2, 0) in ("requeued", "failed")
    job = store.get(job_id)
    assert job.status is Status.FAILED and job.error["code"] == "too_many_attempts"


def test_cancel_queued_job_never_starts(store, job_id):
    assert store.cancel(job_id) == "canceled"
    assert store.get(job_id).status is Status.CANCELED
    assert store.start(job_id, "w", "t", 5, 3).outcome == "terminal"


def test_cancel_running_job_is_cooperative(store, job_id):
    store.start(job_id, "w", "tok", 5, 3)
    assert store.cancel(job_id) == "requested"
    assert store.progress(job_id, "tok", 1, 3) == "cancel"
    assert store.finish(job_id, "tok", Status.CANCELED)
    assert store.get(job_id).status is Status.CANCELED


def test_events_are_published(store):
    pubsub = store.redis.pubsub()
    job_id = new_job_id()
    pubsub.subscribe(store.events_channel(job_id))
    pubsub.get_message(timeout=1)
    store.create(job_id, "a", PARAMS, "q")
    store.start(job_id, "w", "t", 5, 3)
    store.progress(job_id, "t", 1, 3)
    seen = []
    for _ in range(3):
        message = pubsub.get_message(timeout=1)
        seen.append(message and message["data"])
    assert '"queued"' in seen[0] and '"running"' in seen[1] and '"progress"' in seen[2]
