"""The `kiln` CLI and `Client` against the API under gunicorn, and end to end with a real worker."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from kiln_client import Client, KilnAPIError
from kiln_client.cli import main
from kiln_client.sse import parse


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_keys_create_list_revoke(live_api, monkeypatch, capsys):
    monkeypatch.setenv("KILN_URL", live_api.url)
    monkeypatch.setenv("KILN_API_KEY", live_api.admin_key)
    code, out, _ = _run(capsys, "keys", "create", "--role", "user", "--name", "alice")
    created = json.loads(out)
    assert code == 0 and created["secret"].startswith("kiln_key_")
    code, out, _ = _run(capsys, "keys", "list")
    assert created["id"] in out and "alice" in out
    user = Client(live_api.url, created["secret"])
    job = user.submit(model="kiln-ddpm-tiny", steps=2)
    code, out, _ = _run(capsys, "--api-key", created["secret"], "jobs")
    assert code == 0 and job["id"] in out and "queued" in out
    code, out, _ = _run(capsys, "--api-key", created["secret"], "cancel", job["id"])
    assert json.loads(out)["status"] == "canceled"
    code, _, _ = _run(capsys, "keys", "revoke", created["id"])
    assert code == 0
    with pytest.raises(KilnAPIError) as refused:
        user.get(job["id"])
    assert refused.value.status == 401 and refused.value.code == "invalid_key"
    code, _, err = _run(capsys, "--api-key", created["secret"], "jobs")
    assert code == 2 and "invalid_key" in err


def test_client_errors_carry_code_field_and_retry_after(live_api):
    client = Client(live_api.url, live_api.admin_key)
    with pytest.raises(KilnAPIError) as bad:
        client.submit(model="kiln-ddpm-tiny", steps=0)
    assert (bad.value.status, bad.value.field) == (422, "steps")
    with pytest.raises(KilnAPIError) as nobody:
        Client(live_api.url, "").get("job_000000000000aaaaaaaaaaaaaaaa")
    assert nobody.value.code == "missing_key"


def test_list_follows_cursors(live_api):
    client = Client(live_api.url, live_api.admin_key)
    ids = [client.submit(model="kiln-ddpm-tiny", steps=2)["id"] for _ in range(5)]
    assert [job["id"] for job in client.list(limit=2)] == ids[::-1]


def test_sse_parser():
    lines = ["retry: 2000", "", ": keepalive", "id: 1", "event: progress", 'data: {"step": 1}', "",
             "data: a", "data: b", ""]
    events = list(parse(lines))
    assert [(e.event, e.data, e.id) for e in events] == [("progress", '{"step": 1}', "1"), ("message", "a\nb", "1")]


@pytest.mark.slow
def test_generate_wait_download_end_to_end(stack, tmp_path, monkeypatch, capsys):
    """A real worker runs the job; the CLI follows it over SSE with a progress bar."""
    monkeypatch.setenv("KILN_URL", stack.url)
    monkeypatch.delenv("KILN_API_KEY", raising=False)
    out_path = tmp_path / "out.png"
    code, out, err = _run(capsys, "generate", "--model", "kiln-ddpm-tiny", "--steps", "8", "--seed", "3",
                          "--wait", "-o", str(out_path))
    assert code == 0, err + stack.tail()
    assert out.strip() == str(out_path)
    assert "8/8" in err and "[" in err  # the progress bar reached the end
    assert Image.open(io.BytesIO(out_path.read_bytes())).size == (32, 32)


def test_generate_sends_loras_and_guidance(monkeypatch, capsys):
    from kiln_client import cli

    sent = {}

    def fake_submit(self, idempotency_key=None, files=None, **params):
        sent.update(params)
        return {"id": "job_x", "status": "queued"}

    monkeypatch.setattr(cli.Client, "submit", fake_submit)
    code = cli.main(["--url", "http://127.0.0.1:9", "generate", "a cat", "--lora", "pixel-art:0.8",
                     "--lora", "ink", "--guidance-scale", "3.5"])
    assert code == 0
    assert sent["loras"] == [{"name": "pixel-art", "scale": 0.8}, {"name": "ink", "scale": 1.0}]
    assert sent["guidance_scale"] == 3.5
    with pytest.raises(SystemExit):
        cli.main(["--url", "http://127.0.0.1:9", "generate", "a cat", "--lora", "ink:lots"])
    assert "--lora scale must be a number" in capsys.readouterr().err


def test_a_non_ascii_digit_retry_after_is_ignored():
    import requests

    from kiln_client.client import _error

    response = requests.Response()
    response.status_code, response.headers["Retry-After"] = 429, "\u00b2"
    response._content = b'{"error": {"code": "rate_limited", "message": "slow down"}}'
    error = _error(response)
    assert (error.status, error.code, error.retry_after) == (429, "rate_limited", None)
