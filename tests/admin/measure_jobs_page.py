"""Measure the dashboard with 100 000 jobs in the store: `python -m tests.admin.measure_jobs_page
redis://127.0.0.1:6399/0` (an empty, scratch Redis: it is flushed). Prints the median and best of
five requests per page, through the Flask test client (no network; the page's own cost)."""

from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time

from api.app import create_app
from shared.jobs.store import JobStore
from shared.settings import load_settings
from tests.admin.seed import seed_jobs

PAGES = ("/admin/jobs", "/admin/jobs?status=failed", "/admin/jobs?owner=owner3", "/admin/jobs?order=asc",
         "/admin/jobs?q=ramen", "/admin/jobs?q=no-such-prompt", "/admin/", "/admin/jobs/live")


def main(url: str, count: int = 100_000) -> None:
    logging.disable(logging.WARNING)
    store = JobStore.from_url(url)
    store.redis.flushall()
    started = time.perf_counter()
    seed_jobs(store, count, time.time() - count)
    print(f"seeded {count:,} jobs in {time.perf_counter() - started:.1f} s")
    app = create_app(load_settings(redis_url=url, auth="disabled", storage="local",
                                   storage_root=tempfile.mkdtemp()))
    client = app.test_client()
    client.get("/admin/jobs")
    second = client.get("/admin/jobs").get_data(as_text=True).split('href="')[-1]
    for path in (*PAGES, "/admin/jobs?" + second.split("?", 1)[1].split('"')[0].replace("&amp;", "&")):
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            response = client.get(path)
            times.append(time.perf_counter() - t0)
        assert response.status_code == 200, (path, response.status_code)
        print(f"{path[:60]:60s} median {statistics.median(times) * 1000:6.0f} ms   best {min(times) * 1000:6.0f} ms")


if __name__ == "__main__":
    main(sys.argv[1])
