"""Defects found by a black-box probe of the API with keys on: each answered with something other
than a 4xx JSON error naming the problem (a 500, an HTML redirect, a silently accepted input)."""

from __future__ import annotations

import io
import json

import pytest

GOOD = {"prompt": "a large red circle in the centre on a white background", "seed": 1}


# `str.isdigit()` is true for superscripts and circled digits that `int()` cannot read: the limit
# check passed them to `int()` and answered 500.
@pytest.mark.parametrize("limit", ["%C2%B2", "%E2%91%A0", "%D9%A1%D9%A2"])  # ², ①, Arabic-Indic 12
def test_non_ascii_digit_limits_are_422(client, limit):
    answer = client.get(f"/v1/jobs?limit={limit}")
    assert answer.status_code == 422, answer.data
    assert answer.json["error"]["field"] == "limit"


def test_dashboard_non_ascii_digit_limit_is_not_500(client):
    answer = client.get("/admin/jobs?limit=%C2%B2")  # auth disabled: the dashboard opens
    assert answer.status_code == 200, answer.data[:300]


# Werkzeug merges doubled slashes with a 308 whose body is an HTML page; the API answers JSON.
@pytest.mark.parametrize("path", ["/v1/jobs//events", "/v1//jobs", "/v1/jobs//outputs/0"])
def test_doubled_slashes_get_a_json_404_not_an_html_redirect(client, path):
    answer = client.get(path)
    assert answer.status_code == 404, (answer.status_code, answer.data[:200])
    assert answer.json["error"]["code"] == "not_found"


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
@pytest.mark.parametrize("text", ["a\x00b", "red\x1b[31m circle", "a\x7fb", "a\x85b", "a\x08b"])
def test_control_characters_in_prompts_are_422(client, redis_keys, field, text):
    before = redis_keys()
    answer = client.post("/v1/jobs", json={**GOOD, field: text})
    assert answer.status_code == 422, answer.json
    assert answer.json["error"]["field"] == field
    assert "control character" in answer.json["error"]["message"]
    assert redis_keys() == before


@pytest.mark.parametrize("text", ["a large red circle\non a white background", "tab\tand\r\nnewline",
                                  "un cercle rouge, 赤い円 🔴"])
def test_whitespace_and_unicode_prompts_are_accepted(client, text):
    answer = client.post("/v1/jobs", json={**GOOD, "prompt": text})
    assert answer.status_code == 202, answer.json
    assert answer.json["params"]["prompt"] == text


def test_multipart_image_given_twice_is_422(client, redis_keys):
    before = redis_keys()
    png = _png()
    data = {"request": json.dumps({**GOOD, "task": "image-to-image"}),
            "image": [(io.BytesIO(png), "a.png"), (io.BytesIO(png), "b.png")]}
    answer = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert answer.status_code == 422, answer.json
    assert answer.json["error"]["field"] == "image"
    assert redis_keys() == before


def test_multipart_without_a_request_part_is_422(client):
    answer = client.post("/v1/jobs", data={"image": (io.BytesIO(_png()), "a.png")},
                         content_type="multipart/form-data")
    assert answer.status_code == 422, answer.json
    assert answer.json["error"]["field"] == "request"


def _png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(out, "PNG")
    return out.getvalue()


# Error messages were lowercased whole, which rewrote the pattern they quote: `^[A-Za-z0-9_.-]…`
# came out as `^[a-za-z0-9_.-]…`, a rule the API does not apply.
def test_key_owner_pattern_is_quoted_as_applied(auth_app, keys):
    _, admin = keys.make(role="admin")
    answer = auth_app.test_client().post("/v1/keys", json={"owner": "../x"}, headers=admin)
    assert answer.status_code == 422 and answer.json["error"]["field"] == "owner"
    assert "A-Za-z" in answer.json["error"]["message"], answer.json


def test_job_field_messages_keep_the_case_of_what_they_quote(client):
    answer = client.post("/v1/jobs", json={**GOOD, "loras": ["kiln-shapes-pink"]})
    assert answer.status_code == 422 and answer.json["error"]["field"] == "loras.0"
    assert "LoraChoice" in answer.json["error"]["message"], answer.json


class TestStalledBodies:
    """A client that sends headers promising a body and then stops held its connection (and a
    slot of `worker_connections`) for as long as it liked: nothing timed the body read out. Now a
    read that gets no byte for gunicorn's `--timeout` seconds ends the request with a JSON 408."""

    @pytest.fixture
    def live_api_env(self, live_api_env):
        return {**live_api_env, "GUNICORN_CMD_ARGS": "--timeout 3"}

    @pytest.mark.parametrize("content_type, first", [("application/json", b"{"),
                                                     ("multipart/form-data; boundary=b", b"--b\r\n")])
    def test_a_stalled_body_gets_a_json_408(self, live_api, content_type, first):
        import socket
        import time
        from urllib.parse import urlsplit

        parts = urlsplit(live_api.url)
        head = (f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {live_api.admin_key}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: 100\r\n\r\n").encode()
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
            started = time.monotonic()
            sock.sendall(head + first)
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
                if b"\r\n\r\n" in got and got.endswith(b"}\n"):
                    break
        assert time.monotonic() - started < 15, "the stalled request was not timed out"
        status_line, _, rest = got.partition(b"\r\n")
        assert b" 408 " in status_line, got
        body = json.loads(rest.split(b"\r\n\r\n", 1)[1])
        assert body["error"]["code"] == "body_timeout" and body["error"]["field"] == "body"


class TestChunkedBodies:
    """A chunked body (no Content-Length) over the JSON cap was read up to the cap and then parsed
    cut short: a 400 `invalid_json` instead of the 413 a sized body of the same length gets."""

    @pytest.fixture
    def live_api_env(self, live_api_env):
        return {**live_api_env, "KILN_JSON_MAX_BYTES": str(64 * 1024)}

    def test_an_oversized_chunked_json_body_is_413(self, live_api):
        import socket
        from urllib.parse import urlsplit

        body = json.dumps({**GOOD, "prompt": "a" * 200_000}).encode()
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 8192]), body[i:i + 8192])
                          for i in range(0, len(body), 8192)) + b"0\r\n\r\n"
        parts = urlsplit(live_api.url)
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
            sock.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {live_api.admin_key}\r\n"
                         "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            try:
                sock.sendall(chunks)
            except OSError:  # answered and closed before reading it all
                pass
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
                if b"\r\n\r\n" in got and got.endswith(b"}\n"):
                    break
        assert got.split(b" ", 2)[1] == b"413", got
        assert json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "body_too_large"


class TestNoTimeout:
    """gunicorn's `--timeout 0` means no timeout; a socket timeout of 0 would make it non-blocking."""

    @pytest.fixture
    def live_api_env(self, live_api_env):
        return {**live_api_env, "GUNICORN_CMD_ARGS": "--timeout 0"}

    def test_a_body_that_arrives_late_is_still_read(self, live_api):
        import socket
        import time
        from urllib.parse import urlsplit

        body = json.dumps({**GOOD, "prompt": "x" * 3000}).encode()
        parts = urlsplit(live_api.url)
        with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
            sock.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {live_api.admin_key}\r\n"
                         f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            time.sleep(0.5)  # the app is waiting on the body now
            sock.sendall(body)
            got = b""
            while chunk := sock.recv(65536):
                got += chunk
                if b"\r\n\r\n" in got and got.endswith(b"}\n"):
                    break
        assert got.split(b" ", 2)[1] == b"422", got
        assert json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]["field"] == "prompt"
