"""Issue 15.5: request bodies are bounded before parsing work — size per content type (413),
keys + elements and nesting depth by a byte scan (400) — and a submission's rate limit comes
before any of it (429). The original repro (a 39.9 MiB object of 3.3 M keys) runs against the
real gunicorn server."""

from __future__ import annotations

import io
import json
import socket
import time
from urllib.parse import urlsplit

import pytest
import requests

from api.app import create_app
from api.bodylimits import BodyLimits, check_json_shape
from shared.errors import BadRequest
from shared.settings import load_settings

GOOD = {"model": "kiln-ddpm-tiny", "steps": 3, "seed": 1}
LIMITS = BodyLimits(json_bytes=1 << 20, upload_bytes=2 << 20, other_bytes=1 << 10, json_items=1000, json_depth=8)


@pytest.mark.parametrize("text, code", [
    ("[" * 5000 + "]" * 5000, "json_too_deep"),
    ("[" * 9 + "]" * 9, "json_too_deep"),
    ('{"a":' * 9 + "1" + "}" * 9, "json_too_deep"),
    ("[" + ",".join(["1"] * 1001) + "]", "json_too_many_items"),
    ("{" + ",".join(f'"k{i}":1' for i in range(600)) + "}", "json_too_many_items"),
    ('["' + '\\"' * 5000 + '"]', "json_too_many_items"),  # quotes cost too: no long walk over them
])
def test_shape_scan_refuses(text, code):
    with pytest.raises(BadRequest) as refused:
        check_json_shape(text.encode(), LIMITS)
    assert refused.value.code == code


@pytest.mark.parametrize("text", [
    "[" * 8 + "]" * 8,
    json.dumps({"prompt": "[[[[[[[[[[[[ {{{{{{{{{ \" \\\\ ]]]", "x": [[[1]]]}),  # brackets in strings
    json.dumps({"a": "\\\"[[[[[[[[[[[["}),
    "[" + ",".join(["1"] * 999) + "]",
])
def test_shape_scan_lets_through(text):
    check_json_shape(text.encode(), LIMITS)
    json.loads(text)


@pytest.fixture
def small_app(redis_url, tmp_path):
    def make(**overrides):
        settings = load_settings(**{"redis_url": redis_url, "storage_root": tmp_path / "out", "auth": "disabled",
                                    "models_dir": tmp_path / "models", "json_max_bytes": 64 * 1024,
                                    "upload_max_bytes": 256 * 1024, "form_max_bytes": 4096, **overrides})
        return create_app(settings).test_client()
    return make


def test_deep_and_wide_bodies_get_json_errors_not_500(small_app):
    client = small_app(json_max_items=1000)
    for path in ("/v1/jobs", "/v1/keys"):
        deep = client.post(path, data="[" * 5000 + "]" * 5000, content_type="application/json")
        assert deep.status_code == 400 and deep.json["error"]["code"] == "json_too_deep", deep.json
        assert "32 levels" in deep.json["error"]["message"]
        wide = "{" + ",".join(f'"k{i}":1' for i in range(1100)) + "}"
        answer = client.post(path, data=wide, content_type="application/json")
        assert answer.status_code == 400 and answer.json["error"]["code"] == "json_too_many_items"


def test_byte_limits_per_content_type(small_app):
    client = small_app()
    big_json = json.dumps({**GOOD, "prompt": "x" * 70_000})
    answer = client.post("/v1/jobs", data=big_json, content_type="application/json")
    assert answer.status_code == 413 and answer.json["error"]["code"] == "body_too_large"
    assert "65536 bytes" in answer.json["error"]["message"]
    # multipart may be bigger than JSON: 100 KiB passes the size check (then fails as a bad image)
    upload = {"request": json.dumps({**GOOD, "task": "image-to-image", "prompt": "a"}),
              "image": (io.BytesIO(b"\0" * 100_000), "x.png")}
    answer = client.post("/v1/jobs", data=upload, content_type="multipart/form-data")
    assert answer.status_code != 413, answer.json
    upload["image"] = (io.BytesIO(b"\0" * 300_000), "x.png")
    answer = client.post("/v1/jobs", data=upload, content_type="multipart/form-data")
    assert answer.status_code == 413 and "multipart" in answer.json["error"]["message"]
    form = client.post("/admin/keys", data={"name": "x" * 5000})
    assert form.status_code == 413


def test_multipart_request_part_is_scanned_too(small_app):
    upload = {"request": "[" * 5000 + "]" * 5000}
    answer = small_app().post("/v1/jobs", data=upload, content_type="multipart/form-data")
    assert answer.status_code == 400 and answer.json["error"]["code"] == "json_too_deep"


def test_rate_limit_comes_before_the_body(small_app):
    client = small_app(rate_limit_burst=1, rate_limit_per_s=0.01)
    assert client.post("/v1/jobs", json=GOOD).status_code == 202
    answer = client.post("/v1/jobs", data="[" * 5000 + "]" * 5000, content_type="application/json")
    assert answer.status_code == 429 and answer.json["error"]["code"] == "rate_limited"
    assert int(answer.headers["Retry-After"]) >= 1


def _raw_post(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST on a bare socket, sending what the server reads; (status, response bytes)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n{head}\r\n".encode())
        try:
            sock.sendall(body)
        except OSError:  # the server answered and closed before reading it all: that is the point
            pass
        got = b""
        while b"\r\n\r\n" not in got or len(got) < got.index(b"\r\n\r\n") + 60:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    return int(got.split(b" ", 2)[1]), got


def test_the_wide_body_repro_against_gunicorn(live_api):
    wide = ("{" + ",".join(f'"k{i}":1' for i in range(3_300_000)) + "}").encode()
    assert len(wide) > 39 * 1024 * 1024
    started = time.monotonic()
    status, got = _raw_post(live_api.url, "/v1/jobs", wide, {**live_api.admin_headers, "Content-Type":
                                                             "application/json", "Content-Length": str(len(wide))})
    assert status == 413 and b"body_too_large" in got
    small_wide = ("{" + ",".join(f'"k{i}":1' for i in range(1_000_000)) + "}").encode()  # under the byte cap
    status, got = _raw_post(live_api.url, "/v1/jobs", small_wide, {
        **live_api.admin_headers, "Content-Type": "application/json", "Content-Length": str(len(small_wide))})
    assert status == 400 and b"json_too_many_items" in got
    assert time.monotonic() - started < 5
    assert requests.get(f"{live_api.url}/healthz", timeout=5).status_code == 200
