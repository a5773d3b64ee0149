"""Issue 15.2: a slow remote cannot hold a fetch past its deadline, nor every request slot.

A local "hostile" server (loopback only; the SSRF guard is opened for these tests alone) answers
at a drip: nothing at all, the status line one byte at a time, or the body one byte at a time.
Whatever the stage, input fetches and webhook deliveries end at `timeout_s`; and a process
running its most fetches answers the next one 503 with `Retry-After` at once."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from shared import safehttp
from shared.errors import InputRefused
from shared.jobs.record import Job
from shared.webhooks import WebhookConfig, Webhooks

DRIP_S = 0.1
HOLD_S = 30.0


def _serve(conn: socket.socket, stop: threading.Event) -> None:
    """Read the request head, then answer as its path says, one byte per `DRIP_S`."""
    with conn:
        head = b""
        while b"\r\n\r\n" not in head and (chunk := conn.recv(4096)):
            head += chunk
        path = head.split(b" ", 2)[1].decode() if head.count(b" ") >= 2 else "/"
        answers = {"/drip-head": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" * 1000,
                   "/drip-body": b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100_000}
        data = answers.get(path, b"")
        if path == "/drip-body":  # headers at once, then the body at a drip
            conn.sendall(data[:data.index(b"\r\n\r\n") + 4])
            data = data[data.index(b"\r\n\r\n") + 4:]
        deadline = time.monotonic() + HOLD_S
        for byte in data:
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                conn.sendall(bytes([byte]))
            except OSError:
                return
            time.sleep(DRIP_S)
        stop.wait(max(0.0, deadline - time.monotonic()))  # "/silent": say nothing, hold the line


@pytest.fixture
def hostile_server():
    """`http://127.0.0.1:<port>` serving /silent, /drip-head and /drip-body."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=_serve, args=(conn, stop), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    listener.close()


@pytest.mark.parametrize("path", ["/silent", "/drip-head", "/drip-body"])
def test_fetch_deadline_holds_at_every_stage(hostile_server, path):
    policy = safehttp.Policy(timeout_s=1.0, allow_private=True)
    started = time.monotonic()
    with pytest.raises(InputRefused) as refused:
        safehttp.request("GET", f"{hostile_server}{path}", policy)
    took = time.monotonic() - started
    assert refused.value.code == "fetch_timeout", refused.value.message
    assert 0.9 < took < 1.6, f"{path}: the 1 s fetch took {took:.2f} s"


def test_a_hanging_name_lookup_ends_at_the_deadline(monkeypatch):
    # The C resolver has no timeout; a hostile DNS server is stood in for by a lookup that hangs.
    release = threading.Event()
    monkeypatch.setattr(safehttp.socket, "getaddrinfo", lambda *a, **k: release.wait(HOLD_S) and [])
    policy = safehttp.Policy(timeout_s=1.0, allow_private=True)
    started = time.monotonic()
    try:
        with pytest.raises(InputRefused) as refused:
            safehttp.request("GET", "http://slow-dns.invalid/x", policy)
    finally:
        release.set()
    assert refused.value.code == "fetch_timeout", refused.value.message
    assert time.monotonic() - started < 1.6


def test_webhook_delivery_deadline_holds(hostile_server, redis_url):
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    config = WebhookConfig(max_attempts=1, backoff_s=1, timeout_s=1.0, allow_private=True, on_start=False,
                           public_url="http://127.0.0.1:8000", retention_s=60)
    hooks = Webhooks(client, "t", config, secret_for=lambda key_id: "s" * 32)
    started = time.monotonic()
    job = Job.from_hash({"id": "job_1", "status": "succeeded"})
    outcome = hooks._post(f"{hostile_server}/drip-head", "job.succeeded", job)
    assert not outcome["ok"] and "took over" in outcome["error"]
    assert time.monotonic() - started < 1.6


def test_fetch_gate_refuses_beyond_its_slots():
    gate = safehttp.FetchGate(1)
    with gate.slot():
        with pytest.raises(Exception) as busy:
            with gate.slot():
                pass
        assert busy.value.http_status == 503 and busy.value.retry_after >= 1
    with gate.slot():  # freed again
        pass


@pytest.fixture
def live_api_env(live_api_env, tmp_path):
    catalog = tmp_path / "models.json"
    catalog.write_text(json.dumps({"models": [{"name": "sd-tiny", "source": str(tmp_path), "family": "sd",
                                               "default_width": 64, "default_height": 64}]}))
    return {**live_api_env, "KILN_MODELS_FILE": str(catalog), "KILN_FETCH_ALLOW_PRIVATE": "true",
            "KILN_FETCH_TIMEOUT_S": "2", "KILN_FETCH_MAX_CONCURRENT": "3"}


def test_slow_inputs_cannot_take_the_server(live_api, hostile_server):
    """Against gunicorn: 3 fetch slots held by a dripping server, a 4th submission gets a JSON
    503 at once, `/healthz` stays fast, and the held ones end at the 2 s deadline."""
    body = {"model": "sd-tiny", "task": "image-to-image", "prompt": "a cat", "steps": 2,
            "image_url": f"{hostile_server}/drip-body"}
    post = lambda: requests.post(f"{live_api.url}/v1/jobs", json=body, headers=live_api.admin_headers,  # noqa: E731
                                 timeout=30)
    with ThreadPoolExecutor(3) as pool:
        started = time.monotonic()
        held = [pool.submit(post) for _ in range(3)]
        time.sleep(0.7)
        extra = post()
        assert extra.status_code == 503, extra.text
        assert extra.json()["error"]["code"] == "too_many_fetches" and int(extra.headers["Retry-After"]) >= 1
        probe = time.monotonic()
        assert requests.get(f"{live_api.url}/healthz", timeout=5).status_code == 200
        assert time.monotonic() - probe < 0.5
        answers = [future.result() for future in held]
    assert all(a.status_code == 422 and a.json()["error"]["code"] == "fetch_timeout" for a in answers), \
        [a.text for a in answers]
    assert time.monotonic() - started < 4
