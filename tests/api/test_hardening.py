"""Issue 15.6 for the API: URLs come from `KILN_PUBLIC_URL`, never the Host header; security
headers on every response; an empty prompt is told it is empty; a bad `Idempotency-Key` gets
our JSON error, also when gunicorn's own parser is the one refusing it."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import pytest

from api.app import create_app
from api.gunicorn_worker import as_json_error
from shared.settings import load_settings

GOOD = {"model": "kiln-ddpm-tiny", "steps": 3, "seed": 1}


@pytest.fixture
def public_client(redis_url, tmp_path):
    settings = load_settings(redis_url=redis_url, storage_root=tmp_path / "out", models_dir=tmp_path / "m",
                             auth="disabled", public_url="https://kiln.example.com/api")
    return create_app(settings).test_client()


@pytest.mark.parametrize("headers", [{"Host": "evil.example"}, {"X-Forwarded-Host": "evil.example"},
                                     {"Host": "evil.example", "X-Forwarded-Proto": "http"}])
def test_urls_never_follow_the_host_header(public_client, headers):
    made = public_client.post("/v1/jobs", json=GOOD, headers=headers)
    assert made.status_code == 202, made.json
    job = public_client.get(f"/v1/jobs/{made.json['id']}", headers=headers).json
    assert job["url"] == f"https://kiln.example.com/api/v1/jobs/{made.json['id']}"
    assert "evil" not in json.dumps(job) and "evil" not in made.headers.get("Location", "")


def test_security_headers_on_api_responses(public_client):
    for response in (public_client.get("/livez"), public_client.get("/v1/jobs/nope"),
                     public_client.get("/v1/openapi.json")):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]


def test_empty_prompt_is_called_empty(public_client):
    answer = public_client.post("/v1/jobs", json={**GOOD, "model": "kiln-ddpm-tiny", "prompt": ""})
    assert answer.status_code == 422
    assert answer.json["error"]["message"] == "prompt must not be empty"


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "zero\u200bwidth"])
def test_bad_idempotency_keys_get_json_400(public_client, key):
    answer = public_client.post("/v1/jobs", json=GOOD, headers={"Idempotency-Key": key})
    assert answer.status_code == 400 and answer.json["error"]["code"] == "invalid_idempotency_key"


def test_parser_rejections_become_json():
    page = (b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Type: text/html\r\nContent-Length: 9\r\n\r\n"
            b"<html><body><h1><p>Bad Request</p></h1>\n  Invalid header value &#x27;a&#x27;\n</body></html>")
    answer = as_json_error(page)
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 400 Bad Request") and b"application/json" in head
    assert json.loads(body) == {"error": {"code": "bad_request", "message": "Invalid header value 'a'"}}
    assert f"Content-Length: {len(body)}".encode() in head


RAW_REJECTS = [b"Idempotency-Key: a\x01b", b"Idempotency-Key: a\x00b", b"Bad Header: x", b"X: " + b"a" * 9000]


def test_gunicorn_level_rejections_are_json(live_api):
    """Control characters in header values are refused by gunicorn's parser before Flask runs;
    the API's worker class (`api.gunicorn_worker`) rewrites that error page as our JSON error."""
    parts = urlsplit(live_api.url)
    for raw in RAW_REJECTS:
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n" + raw + b"\r\n\r\n{}")
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
        head, body = got.split(b"\r\n\r\n", 1)
        assert head.split(b" ")[1] in (b"400", b"431") and b"application/json" in head, got
        assert "error" in json.loads(body)
