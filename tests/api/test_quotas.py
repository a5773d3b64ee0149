"""Rate limit and active-job cap (429 + Retry-After), idempotency, and fair dispatch between keys."""

from __future__ import annotations

import json

import pytest
import redis

from api.app import create_app
from shared.dispatcher import Dispatcher
from shared.settings import load_settings

GOOD = {"model": "kiln-ddpm-tiny", "steps": 2, "seed": 1}


def _app(redis_url, tmp_path, **overrides):
    settings = load_settings(**{"redis_url": redis_url, "storage_root": tmp_path, "auth": "disabled", **overrides})
    return create_app(settings), settings


def test_rate_limit_answers_429_with_retry_after(redis_url, tmp_path):
    app, _ = _app(redis_url, tmp_path, rate_limit_per_s=0.5, rate_limit_burst=3)
    client = app.test_client()
    codes = [client.post("/v1/jobs", json=GOOD).status_code for _ in range(4)]
    assert codes == [202, 202, 202, 429]
    refused = client.post("/v1/jobs", json=GOOD)
    assert refused.json["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 2  # one token at 0.5/s


def test_rate_limit_is_per_key(redis_url, tmp_path):
    app, _ = _app(redis_url, tmp_path, rate_limit_per_s=0.1, rate_limit_burst=1, auth="enabled")
    store = app.extensions["kiln"].keys
    heads = [{"Authorization": f"Bearer {store.create().secret}"} for _ in range(2)]
    client = app.test_client()
    assert [client.post("/v1/jobs", json=GOOD, headers=h).status_code for h in heads] == [202, 202]
    assert client.post("/v1/jobs", json=GOOD, headers=heads[0]).status_code == 429


def test_active_job_cap_frees_up_when_jobs_end(redis_url, tmp_path):
    app, _ = _app(redis_url, tmp_path, max_active_jobs=2)
    client = app.test_client()
    first = client.post("/v1/jobs", json=GOOD).json["id"]
    assert client.post("/v1/jobs", json=GOOD).status_code == 202
    refused = client.post("/v1/jobs", json=GOOD)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "too_many_active_jobs"
    assert "Retry-After" in refused.headers
    client.post(f"/v1/jobs/{first}/cancel")
    assert client.post("/v1/jobs", json=GOOD).status_code == 202


def test_idempotency_same_body_same_job_other_body_409(client):
    headers = {"Idempotency-Key": "order-17"}
    first = client.post("/v1/jobs", json=GOOD, headers=headers)
    again = client.post("/v1/jobs", json=GOOD, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json["id"] == first.json["id"] and again.headers["Idempotent-Replayed"] == "true"
    other = client.post("/v1/jobs", json={**GOOD, "seed": 2}, headers=headers)
    assert other.status_code == 409 and other.json["error"]["code"] == "idempotency_key_reused"
    assert client.post("/v1/jobs", json=GOOD, headers={"Idempotency-Key": "order-18"}).json["id"] != first.json["id"]
    assert len(client.get("/v1/jobs").json["jobs"]) == 2


def test_idempotency_keys_are_scoped_per_api_key(redis_url, tmp_path):
    app, _ = _app(redis_url, tmp_path, auth="enabled")
    store = app.extensions["kiln"].keys
    alice, bob = ({"Authorization": f"Bearer {store.create().secret}", "Idempotency-Key": "k"} for _ in range(2))
    client = app.test_client()
    assert client.post("/v1/jobs", json=GOOD, headers=alice).json["id"] != \
        client.post("/v1/jobs", json={**GOOD, "seed": 9}, headers=bob).json["id"]


def test_a_refused_request_does_not_burn_its_idempotency_key(redis_url, tmp_path):
    app, _ = _app(redis_url, tmp_path, max_active_jobs=1)
    client = app.test_client()
    client.post("/v1/jobs", json=GOOD)
    assert client.post("/v1/jobs", json=GOOD, headers={"Idempotency-Key": "x"}).status_code == 429
    client.post(f"/v1/jobs/{client.get('/v1/jobs').json['jobs'][0]['id']}/cancel")
    assert client.post("/v1/jobs", json=GOOD, headers={"Idempotency-Key": "x"}).status_code == 202


@pytest.mark.parametrize("value", ["", "x" * 256])
def test_bad_idempotency_key(client, value):
    response = client.post("/v1/jobs", json=GOOD, headers={"Idempotency-Key": value})
    assert response.status_code == 400 and response.json["error"]["field"] == "Idempotency-Key"


def test_fair_dispatch_alternates_between_keys(redis_url, tmp_path):
    """A floods 8 jobs, then B submits 2: B's jobs go out second and fourth, not after all of A's."""
    app, settings = _app(redis_url, tmp_path, auth="enabled", rate_limit_burst=50, dispatch_queue_depth=100)
    store = app.extensions["kiln"].keys
    a, b = ({"Authorization": f"Bearer {store.create(name=n).secret}"} for n in "ab")
    client = app.test_client()
    owner = {}
    for headers, count in ((a, 8), (b, 2)):
        for _ in range(count):
            owner[client.post("/v1/jobs", json=GOOD, headers=headers).json["id"]] = "ab"[headers is b]
    sent = []
    Dispatcher(settings, send=lambda job_id, queue: sent.append(owner[job_id])).dispatch_once()
    assert "".join(sent) == "ababaaaaaa"


def test_dispatch_keeps_the_broker_queue_short_and_skips_canceled(redis_url, tmp_path):
    """Real Celery messages into the real broker list: never more than the configured depth."""
    app, settings = _app(redis_url, tmp_path, dispatch_queue_depth=3)
    client = app.test_client()
    ids = [client.post("/v1/jobs", json=GOOD).json["id"] for _ in range(5)]
    client.post(f"/v1/jobs/{ids[0]}/cancel")
    dispatcher = Dispatcher(settings)
    assert dispatcher.dispatch_once() == 3
    broker = redis.Redis.from_url(redis_url)
    assert broker.llen("kiln.default") == 3
    assert dispatcher.dispatch_once() == 0  # full
    assert dispatcher.fair.waiting("kiln.default") == 1
    message = json.loads(broker.lindex("kiln.default", 0))
    assert message["headers"]["task"] == "kiln.run_job"
    sent = {json.loads(m)["headers"]["argsrepr"] for m in broker.lrange("kiln.default", 0, -1)}
    assert sent == {repr([job_id]) for job_id in ids[1:4]}  # oldest first; the canceled one skipped
    broker.delete("kiln.default")  # workers took them
    assert dispatcher.dispatch_once() == 1
    assert not redis.Redis.from_url(redis_url).zcard("kiln:fair:inflight")


def test_dispatch_resends_what_a_dead_dispatcher_took(redis_url, tmp_path, monkeypatch):
    app, settings = _app(redis_url, tmp_path)
    job_id = app.test_client().post("/v1/jobs", json=GOOD).json["id"]
    dispatcher = Dispatcher(settings, send=lambda *a: None)
    assert dispatcher.fair.take("kiln.default") == job_id  # taken, then the process "died"
    monkeypatch.setattr("shared.dispatcher.RESEND_AFTER_S", 0.0)
    sent = []
    dispatcher._send = lambda jid, queue: sent.append((jid, queue))
    dispatcher.dispatch_once()
    assert sent == [(job_id, "kiln.default")]


def test_concurrent_requests_with_one_idempotency_key_make_one_job(app):
    from concurrent.futures import ThreadPoolExecutor

    def post(_):
        return app.test_client().post("/v1/jobs", json=GOOD, headers={"Idempotency-Key": "race"})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    assert sorted(a.status_code for a in answers) == [200] * 7 + [202]
    assert len({a.json["id"] for a in answers}) == 1
    assert app.extensions["kiln"].store.count() == 1
