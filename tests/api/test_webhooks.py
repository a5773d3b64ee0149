"""Webhooks: signed POSTs on completion (and start), retried with backoff, recorded on the job."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from api.app import create_app
from shared.dispatcher import Dispatcher
from shared.jobs.record import Output, Status
from shared.settings import load_settings
from shared.webhooks import sign, verify

GOOD = {"model": "kiln-ddpm-tiny", "steps": 2, "seed": 1}


class Receiver:
    """A local HTTP server answering each POST with the next of `statuses` (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses, self.got = list(statuses), []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.got.append((dict(self.headers), body, time.monotonic()))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver():
    made = []

    def make(statuses=()):
        made.append(Receiver(list(statuses)))
        return made[-1]
    yield make
    for r in made:
        r.server.shutdown()


@pytest.fixture
def setup(redis_url, tmp_path):
    def make(**overrides):
        settings = load_settings(**{"redis_url": redis_url, "storage_root": tmp_path, "fetch_allow_private": True,
                                    "webhook_backoff_s": 0.05, "webhook_max_attempts": 4, **overrides})
        app = create_app(settings)
        created = app.extensions["kiln"].keys.create()
        headers = {"Authorization": f"Bearer {created.secret}"}
        return app, settings, headers
    return make


def _finish(app, job_id: str, status: Status = Status.SUCCEEDED) -> None:
    store = app.extensions["kiln"].store
    assert store.start(job_id, "w1", "tok", 30, 3).started
    outputs = [Output(0, f"outputs/{job_id}/0.png", 10, 1, "image/png", 32, 32)] if status == Status.SUCCEEDED else []
    store.finish(job_id, "tok", status, outputs=outputs, error=None if outputs else {"code": "x", "message": "y"})


def _pump(settings, until, timeout: float = 10.0) -> None:
    hooks = Dispatcher(settings).webhooks
    deadline = time.monotonic() + timeout
    while not until() and time.monotonic() < deadline:
        hooks.scan()
        hooks.deliver_due()
        time.sleep(0.01)


def test_signed_delivery_retried_with_backoff_and_recorded(setup, receiver):
    app, settings, headers = setup()
    hook = receiver([500, 503])
    client = app.test_client()
    job_id = client.post("/v1/jobs", json={**GOOD, "webhook_url": hook.url}, headers=headers).json["id"]
    _finish(app, job_id)
    _pump(settings, lambda: len(hook.got) >= 3)
    assert len(hook.got) == 3
    secret = client.get("/v1/me", headers=headers).json["webhook_secret"]
    for sent_headers, body, _ in hook.got:
        assert verify(secret, sent_headers["Kiln-Signature"], body)
        assert not verify("another-secret-0123456789", sent_headers["Kiln-Signature"], body)
        assert sent_headers["Kiln-Event"] == "job.succeeded"
        assert sent_headers["Kiln-Delivery"] == f"{job_id}:job.succeeded"
    payload = json.loads(hook.got[-1][1])
    assert payload["type"] == "job.succeeded" and payload["job"]["id"] == job_id
    assert payload["job"]["outputs"][0]["url"].endswith(f"/v1/jobs/{job_id}/outputs/0")
    gaps = [b[2] - a[2] for a, b in zip(hook.got, hook.got[1:])]
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1  # 0.05 s, then doubled
    attempts = client.get(f"/v1/jobs/{job_id}", headers=headers).json["webhook"]["attempts"]
    assert [(a["attempt"], a["ok"], a["status_code"]) for a in attempts] == [(1, False, 500), (2, False, 503),
                                                                             (3, True, 200)]


def test_gives_up_after_max_attempts(setup, receiver):
    app, settings, headers = setup(webhook_max_attempts=2)
    hook = receiver([500] * 10)
    job_id = app.test_client().post("/v1/jobs", json={**GOOD, "webhook_url": hook.url}, headers=headers).json["id"]
    _finish(app, job_id, Status.FAILED)
    _pump(settings, lambda: len(hook.got) >= 2)
    _pump(settings, lambda: False, timeout=0.5)
    assert len(hook.got) == 2
    assert json.loads(hook.got[0][1])["job"]["error"] == {"code": "x", "message": "y"}


def test_start_event_when_configured_and_each_event_once(setup, receiver):
    app, settings, headers = setup(webhook_on_start=True)
    hook = receiver()
    job_id = app.test_client().post("/v1/jobs", json={**GOOD, "webhook_url": hook.url}, headers=headers).json["id"]
    store = app.extensions["kiln"].store
    store.start(job_id, "w1", "tok", 30, 3)
    _pump(settings, lambda: len(hook.got) >= 1)
    _pump(settings, lambda: False, timeout=0.3)
    store.finish(job_id, "tok", Status.CANCELED)
    _pump(settings, lambda: len(hook.got) >= 2)
    assert [h["Kiln-Event"] for h, _, _ in hook.got] == ["job.started", "job.canceled"]


def test_private_webhook_urls_refused_at_submission(redis_url, tmp_path):
    app = create_app(load_settings(redis_url=redis_url, storage_root=tmp_path, auth="disabled"))
    response = app.test_client().post("/v1/jobs", json={**GOOD, "webhook_url": "http://127.0.0.1:9/hook"})
    assert response.status_code == 422
    assert response.json["error"]["field"] == "webhook_url"
    assert response.json["error"]["code"] == "address_not_allowed"


def test_signature_rejects_tampering_and_old_timestamps():
    body = b'{"a":1}'
    header = f"t=1000,v1={sign('s' * 16, 1000, body)}"
    assert verify("s" * 16, header, body, now=1100)
    assert not verify("s" * 16, header, b'{"a":2}', now=1100)
    assert not verify("s" * 16, header, body, now=2000)
    assert not verify("s" * 16, "garbage", body, now=1100)


def test_verify_refuses_a_non_ascii_digit_timestamp():
    body = b'{"id": "job_1"}'
    signature = sign("secret-0123456789abcdef", 1, body)
    assert not verify("secret-0123456789abcdef", f"t=\u00b2,v1={signature}", body)  # '²'.isdigit() is true
