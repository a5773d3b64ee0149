"""Issue 15.1: event streams must not exhaust the API. Against the real gunicorn-served app
(`live_api`: one process, the evented worker), hundreds of open streams leave `/healthz` and
another tenant's `/v1/me` fast; caps per key and per process answer JSON 429/503; a revoked
key's open stream ends."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import pytest
import requests

GOOD = {"model": "kiln-ddpm-tiny", "steps": 3, "seed": 1}
STREAMS = 200


def _user(live_api, owner: str) -> dict[str, str]:
    made = requests.post(f"{live_api.url}/v1/keys", json={"role": "user", "owner": owner},
                         headers=live_api.admin_headers, timeout=10)
    assert made.status_code == 201, made.text
    return {"Authorization": f"Bearer {made.json()['secret']}"}


def _open_raw_stream(url: str, job_id: str, headers: dict[str, str]) -> socket.socket:
    """A bare socket holding one event stream open (cheaper for the test than a client each)."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: {parts.netloc}\r\n{head}\r\n".encode())
    return sock


def _read_until(sock: socket.socket, marker: bytes, limit_s: float = 10) -> bytes:
    got, deadline = b"", time.monotonic() + limit_s
    while marker not in got and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


@pytest.fixture
def live_api_env(live_api_env):
    return {**live_api_env, "KILN_SSE_MAX_STREAMS_PER_KEY": "1000", "KILN_SSE_MAX_STREAMS": "300",
            "KILN_SSE_KEY_RECHECK_S": "0.5", "KILN_SSE_HEARTBEAT_S": "5"}


def test_hundreds_of_streams_leave_other_requests_fast(live_api):
    tenant = _user(live_api, "tenant-a")
    job = requests.post(f"{live_api.url}/v1/jobs", json=GOOD, headers=tenant, timeout=10).json()
    other = _user(live_api, "tenant-b")
    socks = [_open_raw_stream(live_api.url, job["id"], tenant) for _ in range(STREAMS)]
    try:
        for sock in socks:  # every stream is really open: its first status event arrived
            assert b"event: status" in _read_until(sock, b"event: status")
        slowest = 0.0
        for _ in range(10):
            for path, headers in (("/healthz", {}), ("/v1/me", other)):
                started = time.monotonic()
                answer = requests.get(f"{live_api.url}{path}", headers=headers, timeout=5)
                slowest = max(slowest, time.monotonic() - started)
                assert answer.status_code == 200, answer.text
        assert slowest < 1.0, f"slowest answer beside {STREAMS} streams took {slowest:.2f} s"
    finally:
        for sock in socks:
            sock.close()


def test_revoked_keys_stream_ends(live_api):
    made = requests.post(f"{live_api.url}/v1/keys", json={"role": "user"}, headers=live_api.admin_headers,
                         timeout=10).json()
    headers = {"Authorization": f"Bearer {made['secret']}"}
    job = requests.post(f"{live_api.url}/v1/jobs", json=GOOD, headers=headers, timeout=10).json()
    stream = requests.get(f"{live_api.url}/v1/jobs/{job['id']}/events", headers=headers, stream=True, timeout=10)
    assert stream.status_code == 200
    requests.delete(f"{live_api.url}/v1/keys/{made['id']}", headers=live_api.admin_headers, timeout=10)
    started = time.monotonic()
    lines = list(stream.iter_lines(decode_unicode=True))  # returns only when the server ends it
    assert time.monotonic() - started < 5
    assert "event: error" in lines and any("key_revoked" in line for line in lines)


class TestCaps:
    @pytest.fixture
    def live_api_env(self, live_api_env):
        return {**live_api_env, "KILN_SSE_MAX_STREAMS_PER_KEY": "2", "KILN_SSE_MAX_STREAMS": "3"}

    def test_per_key_then_per_process_caps_answer_json(self, live_api):
        first, second = _user(live_api, "t1"), _user(live_api, "t2")
        jobs = {id(h): requests.post(f"{live_api.url}/v1/jobs", json=GOOD, headers=h, timeout=10).json()["id"]
                for h in (first, second)}
        url = lambda h: f"{live_api.url}/v1/jobs/{jobs[id(h)]}/events"  # noqa: E731
        held = [requests.get(url(first), headers=first, stream=True, timeout=10) for _ in range(2)]
        over_key = requests.get(url(first), headers=first, timeout=10)
        assert over_key.status_code == 429 and over_key.json()["error"]["code"] == "too_many_streams_for_key"
        assert int(over_key.headers["Retry-After"]) >= 1
        held.append(requests.get(url(second), headers=second, stream=True, timeout=10))
        over_process = requests.get(url(second), headers=second, timeout=10)
        assert over_process.status_code == 503 and over_process.json()["error"]["code"] == "too_many_streams"
        assert int(over_process.headers["Retry-After"]) >= 1
        assert requests.get(f"{live_api.url}/healthz", timeout=5).status_code == 200
        for response in held:
            response.close()
        deadline = time.monotonic() + 5  # closed streams give their slots back
        while (again := requests.get(url(first), headers=first, stream=True, timeout=10)).status_code != 200:
            again.close()
            assert time.monotonic() < deadline, again.text
            time.sleep(0.2)
        again.close()
