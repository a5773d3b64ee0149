"""shared.jobs.query: bounded, filtered, sorted cursor pages, and the overview's numbers."""

from __future__ import annotations

import pytest

from shared.jobs.query import JobQuery, decode_cursor, find_jobs, overview, percentiles
from shared.jobs.store import JobStore
from tests.admin.seed import seed_jobs

START = 1_700_000_000.0


@pytest.fixture
def store(redis_url):
    return JobStore.from_url(redis_url)


def walk(store, filt):
    """Every page of a filter, following cursors; returns the ids in order."""
    seen, cursor = [], None
    for _ in range(1000):
        page = find_jobs(store, JobQuery(**{**filt.__dict__, "cursor": cursor}))
        seen += [j.id for j in page.jobs]
        if page.next_cursor is None:
            return seen
        cursor = decode_cursor(page.next_cursor)
    raise AssertionError("paging did not end")


def test_paging_covers_every_job_once_in_both_orders(store):
    ids = seed_jobs(store, 237, START)
    assert walk(store, JobQuery(limit=25)) == ids[::-1]
    assert walk(store, JobQuery(limit=25, order="asc")) == ids


def test_equal_creation_times_do_not_lose_jobs(store):
    ids = seed_jobs(store, 60, START, spacing_s=0.0)
    assert sorted(walk(store, JobQuery(limit=7))) == sorted(ids)
    assert sorted(walk(store, JobQuery(limit=7, order="asc"))) == sorted(ids)


def test_filters_status_model_owner_time_and_text(store):
    seed_jobs(store, 140, START)
    failed = walk(store, JobQuery(status="failed", limit=10))
    assert len(failed) == 20 and all(store.get(i).status.value == "failed" for i in failed)
    owner = walk(store, JobQuery(owner="owner3", status="queued", limit=10))
    assert owner and all(store.get(i).owner == "owner3" and store.get(i).status.value == "queued" for i in owner)
    assert walk(store, JobQuery(model="other-model")) == []
    recent = walk(store, JobQuery(since=START + 100))
    assert len(recent) == 40
    foxes = walk(store, JobQuery(text="RED FOX", limit=5))
    assert len(foxes) == 24 and all("red fox" in store.get(i).params["prompt"] for i in foxes)


def test_a_sparse_filter_reads_a_bounded_window_and_says_keep_going(store):
    seed_jobs(store, 300, START)
    page = find_jobs(store, JobQuery(text="#7", limit=50, max_scan=100))
    assert page.scanned == 100 and page.next_cursor is not None
    assert walk(store, JobQuery(text="#7", limit=50, max_scan=100)) == \
        walk(store, JobQuery(text="#7", limit=50, max_scan=1000))


def test_percentiles():
    assert percentiles([]) == {"p50": None, "p95": None}
    values = [float(v) for v in range(1, 101)]
    assert percentiles(values) == {"p50": 50.5, "p95": 95.0}


def test_overview_counts_rates_and_queues(store):
    now = START + 7200
    seed_jobs(store, 70, now - 3500, spacing_s=50)  # 70 jobs over the last hour (the last ones are in the future)
    store.redis.rpush("kiln.default", "m1", "m2")
    result = overview(store, ["kiln.default"], now=now)
    assert sum(result.now.values()) == 70
    assert result.last_hour["succeeded"] == 30  # created within the hour: 70 jobs, 3 of every 7 succeeded
    assert result.failure_rate_hour == pytest.approx(10 / 40)
    assert result.queues == [{"name": "kiln.default", "broker": 2, "waiting": 0}]
    assert result.queue_wait["p50"] is not None and result.run_time["p95"] >= result.run_time["p50"]
    assert len(result.hourly_created) == 24 and result.hourly_created[-1] == 70
