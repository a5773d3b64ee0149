"""Server-Sent Events on a real gunicorn server, read by the real client while the job runs
(here a test drives the job through the store as a worker would)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from kiln_client import Client
from shared.jobs.record import Output, Status
from shared.jobs.store import JobStore

GOOD = {"model": "kiln-ddpm-tiny", "steps": 3, "seed": 1}


def _drive(store: JobStore, job_id: str, steps: int) -> None:
    time.sleep(0.3)
    store.start(job_id, "w1", "tok", 30, 3)
    for step in range(1, steps + 1):
        time.sleep(0.05)
        store.progress(job_id, "tok", step, steps)
    store.finish(job_id, "tok", Status.SUCCEEDED, outputs=[Output(0, f"outputs/{job_id}/0.png", 5, 1,
                                                                  "image/png", 32, 32)])


def test_stream_relays_status_and_progress_then_ends(live_api, redis_url):
    client = Client(live_api.url, live_api.admin_key)
    job = client.submit(**GOOD)
    driver = threading.Thread(target=_drive, args=(JobStore.from_url(redis_url), job["id"], 3))
    driver.start()
    events = [(e.event, json.loads(e.data)) for e in client.stream(job["id"])]  # returns when it ends
    driver.join()
    statuses = [data["status"] for kind, data in events if kind == "status"]
    assert statuses == ["queued", "running", "succeeded"]
    assert [(d["step"], d["total"]) for k, d in events if k == "progress"] == [(1, 3), (2, 3), (3, 3)]
    assert events[-1][1]["outputs"][0]["index"] == 0


def test_wait_with_progress_callback(live_api, redis_url):
    client = Client(live_api.url, live_api.admin_key)
    job = client.submit(**GOOD)
    threading.Thread(target=_drive, args=(JobStore.from_url(redis_url), job["id"], 3), daemon=True).start()
    seen = []
    done = client.wait(job["id"], timeout=20, on_progress=lambda s, t: seen.append(s))
    assert done["status"] == "succeeded" and seen == [1, 2, 3]


def test_open_streams_do_not_block_other_requests(live_api):
    """Three streams on queued jobs hold three of the server's six threads; others still answer."""
    client = Client(live_api.url, live_api.admin_key)
    streams = []
    for _ in range(3):
        job = client.submit(**GOOD)
        response = requests.get(f"{live_api.url}/v1/jobs/{job['id']}/events", headers=live_api.admin_headers,
                                stream=True, timeout=10)
        assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        streams.append(response)
    started = time.monotonic()
    for _ in range(5):
        assert requests.get(f"{live_api.url}/v1/models", headers=live_api.admin_headers, timeout=5).ok
    assert time.monotonic() - started < 3
    for response in streams:
        response.close()


@pytest.fixture
def live_api_env(live_api_env):
    return {**live_api_env, "KILN_SSE_MAX_LIFETIME_S": "1.5", "KILN_SSE_HEARTBEAT_S": "0.3"}


def test_stream_lifetime_and_heartbeat(live_api):
    """A stream sends keepalive comments and ends at its maximum lifetime (1.5 s here)."""
    client = Client(live_api.url, live_api.admin_key)
    job = client.submit(**GOOD)
    response = requests.get(f"{live_api.url}/v1/jobs/{job['id']}/events", headers=live_api.admin_headers,
                            stream=True, timeout=10)
    started = time.monotonic()
    lines = list(response.iter_lines(decode_unicode=True))
    assert time.monotonic() - started < 5
    assert ": keepalive" in lines
    assert "event: timeout" in lines


def test_terminal_job_stream_sends_one_event_and_ends(live_api):
    client = Client(live_api.url, live_api.admin_key)
    job = client.submit(**GOOD)
    client.cancel(job["id"])
    events = list(client.stream(job["id"]))
    assert [e.event for e in events] == ["status"] and json.loads(events[0].data)["status"] == "canceled"


def test_streams_are_capped_per_process_and_freed_on_close(redis_url, tmp_path):
    from api.app import create_app
    from shared.settings import load_settings

    app = create_app(load_settings(redis_url=redis_url, storage_root=tmp_path, auth="disabled", sse_max_streams=2))
    client = app.test_client()
    job_id = client.post("/v1/jobs", json=GOOD).json["id"]
    first, second = (client.get(f"/v1/jobs/{job_id}/events") for _ in range(2))
    third = client.get(f"/v1/jobs/{job_id}/events")
    assert third.status_code == 503 and third.json["error"]["code"] == "too_many_streams"
    second.close()  # never read: closing still frees its slot
    fourth = client.get(f"/v1/jobs/{job_id}/events")
    assert fourth.status_code == 200
    fourth.close()  # (last opened, first closed: the test client nests request contexts)
    first.close()
