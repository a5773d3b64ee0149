"""The auth matrix, on every endpoint the OpenAPI document lists: no key, malformed header,
unknown key, revoked key → 401; user on admin endpoints → 403; another owner's job → 404."""

from __future__ import annotations

import re

import pytest

from api.openapi import OPERATIONS
from shared.auth import KeyStore

GOOD = {"model": "kiln-ddpm-tiny", "steps": 2, "seed": 1}
ADMIN_ONLY = {"createKey", "listKeys", "getKey", "revokeKey"}
JOB_SCOPED = {"getJob", "cancelJob", "jobEvents", "getOutput"}


def _path(template: str, job_id: str, key_id: str) -> str:
    return (template.replace("{job_id}", job_id).replace("{key_id}", key_id).replace("{index}", "0")
            .replace("{name}", "kiln-ddpm-tiny"))


def _call(client, method: str, path: str, headers: dict | None = None):
    body = {"json": GOOD} if (method, path) == ("post", "/v1/jobs") else {}
    if path == "/v1/keys" and method == "post":
        body = {"json": {"role": "user"}}
    return getattr(client, method)(path, headers=headers or {}, **body)


PRIVATE = [op for op in OPERATIONS if not op[7]]


def test_every_api_route_is_in_the_openapi_document(auth_app):
    """Every route of the public API (not the /admin pages, /metrics or the docs themselves)."""
    documented = {(m.upper(), re.sub(r"\{(\w+)\}", r"<\1>", p)) for m, p, *_ in OPERATIONS}
    routes = set()
    for rule in auth_app.url_map.iter_rules():
        if not rule.rule.startswith(("/v1/", "/healthz", "/livez")) or rule.rule == "/v1/openapi.json":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", rule.rule)
        routes |= {(m, path) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert routes == documented


@pytest.mark.parametrize("op", PRIVATE, ids=[op[2] for op in PRIVATE])
@pytest.mark.parametrize("header", [None, "Basic abc", "Bearer ", "Bearer kiln_key_nope_nope", "revoked"])
def test_refused_without_a_valid_key(auth_app, keys, op, header):
    client = auth_app.test_client()
    if header == "revoked":
        key_id, headers = keys.make("admin")
        keys.store.revoke(key_id)
    else:
        headers = {"Authorization": header} if header else {}
    response = _call(client, op[0], _path(op[1], "job_000000000000aaaaaaaaaaaaaaaa", "key_x"), headers)
    assert response.status_code == 401, (op[2], response.json)
    assert response.json["error"]["code"] in ("missing_key", "invalid_key")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("op", [op for op in OPERATIONS if op[7]], ids=lambda op: op[2])
def test_public_endpoints_need_no_key(auth_app, op):
    assert auth_app.test_client().get(op[1]).status_code in (200, 503)


def test_docs_and_metrics_need_no_key(auth_app):
    client = auth_app.test_client()
    assert client.get("/v1/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200
    assert client.get("/metrics").status_code == 200


@pytest.mark.parametrize("op", [op for op in OPERATIONS if op[2] in ADMIN_ONLY], ids=lambda op: op[2])
def test_admin_endpoints_refuse_users(auth_app, keys, op):
    user_id, user = keys.make("user")
    response = _call(auth_app.test_client(), op[0], _path(op[1], "", user_id), user)
    assert response.status_code == 403 and response.json["error"]["code"] == "admin_required"


@pytest.mark.parametrize("op", [op for op in OPERATIONS if op[2] in JOB_SCOPED], ids=lambda op: op[2])
def test_another_owners_job_is_not_found(auth_app, keys, op):
    client = auth_app.test_client()
    _, alice = keys.make("user")
    _, bob = keys.make("user")
    _, admin = keys.make("admin")
    job_id = client.post("/v1/jobs", json=GOOD, headers=alice).json["id"]
    response = _call(client, op[0], _path(op[1], job_id, ""), bob)
    assert response.status_code == 404, response.json
    assert response.json["error"]["message"] == f"no job {job_id!r}"  # same as a job that does not exist
    # The owner and an admin reach it (the output does not exist yet: a 404 naming the index).
    for who in (alice, admin):
        answer = _call(client, op[0], _path(op[1], job_id, ""), who)
        if op[2] == "getOutput":
            assert answer.status_code == 404 and answer.json["error"]["field"] == "index"
        else:
            assert answer.status_code == 200, answer.json
        answer.close()  # an event stream ends only when the client goes


def test_listing_shows_only_the_callers_jobs(auth_app, keys):
    client = auth_app.test_client()
    _, alice = keys.make("user")
    _, bob = keys.make("user")
    _, admin = keys.make("admin")
    mine = {client.post("/v1/jobs", json=GOOD, headers=alice).json["id"] for _ in range(2)}
    theirs = client.post("/v1/jobs", json=GOOD, headers=bob).json["id"]
    assert {j["id"] for j in client.get("/v1/jobs", headers=alice).json["jobs"]} == mine
    assert {j["id"] for j in client.get("/v1/jobs?owner=" + "x", headers=alice).json["jobs"]} == mine
    assert {j["id"] for j in client.get("/v1/jobs", headers=admin).json["jobs"]} == mine | {theirs}


def test_keys_lifecycle_over_http(auth_app, keys):
    client = auth_app.test_client()
    _, admin = keys.make("admin")
    created = client.post("/v1/keys", json={"role": "user", "name": "alice"}, headers=admin)
    assert created.status_code == 201
    secret, key_id = created.json["secret"], created.json["id"]
    user = {"Authorization": f"Bearer {secret}"}
    assert client.get("/v1/me", headers=user).json["role"] == "user"
    listed = client.get("/v1/keys", headers=admin).json["keys"]
    assert key_id in [k["id"] for k in listed]
    assert all("secret" not in k and "hash" not in k for k in listed)
    raw = keys.store.redis.hgetall(f"kiln:key:{key_id}")
    assert secret not in raw.values() and raw["hash"] != secret  # only the hash is stored
    assert client.delete(f"/v1/keys/{key_id}", headers=admin).json["revoked_at"] is not None
    assert client.get("/v1/me", headers=user).status_code == 401
    usage = client.get(f"/v1/keys/{key_id}", headers=admin).json["usage"]
    assert usage["requests"] == 1


@pytest.mark.parametrize("body, field", [({"role": "root"}, "role"), ({"name": "x" * 101}, "name"),
                                         ({"owner": "a b"}, "owner"), ({"colour": 1}, "colour"), ([1], "body")])
def test_bad_key_requests_are_422(auth_app, keys, body, field):
    _, admin = keys.make("admin")
    response = auth_app.test_client().post("/v1/keys", json=body, headers=admin)
    assert response.status_code == 422 and response.json["error"]["field"] == field


def test_bootstrap_admin_key_from_settings(redis_url, tmp_path):
    from api.app import create_app
    from shared.settings import load_settings

    secret = "bootstrap-secret-0123456789abcdef"
    settings = load_settings(redis_url=redis_url, storage_root=tmp_path, bootstrap_admin_key=secret)
    client = create_app(settings).test_client()
    create_app(settings)  # a second process start registers nothing new
    me = client.get("/v1/me", headers={"Authorization": f"Bearer {secret}"}).json
    assert me["role"] == "admin"
    assert len(client.get("/v1/keys", headers={"Authorization": f"Bearer {secret}"}).json["keys"]) == 1


def test_keys_module_cli_creates_an_admin_key(redis_url, monkeypatch, capsys):
    import json

    from api import keys as keys_cli
    from shared.settings import get_settings

    monkeypatch.setenv("KILN_REDIS_URL", redis_url)
    get_settings.cache_clear()
    try:
        assert keys_cli.main(["create", "--role", "admin", "--name", "ops"]) == 0
    finally:
        get_settings.cache_clear()
    printed = json.loads(capsys.readouterr().out)
    import redis as redis_lib
    store = KeyStore(redis_lib.Redis.from_url(redis_url, decode_responses=True))
    assert store.verify(printed["secret"]).role == "admin"


def test_disabled_auth_acts_as_local_admin(client):
    me = client.get("/v1/me").json
    assert (me["role"], me["owner"], me["key_id"]) == ("admin", "local", "local")
    assert client.get("/v1/keys").status_code == 200
