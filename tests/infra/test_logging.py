"""Structured logs: JSON lines carrying job, worker and request ids; request ids over HTTP."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest
from flask import Flask

from shared.logging import (REQUEST_ID_HEADER, configure_logging, current_request_id, install_request_id,
                            log_context, set_worker_id)


@pytest.fixture
def lines():
    """Configure JSON logging into a buffer; yields a function returning the parsed lines."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging("DEBUG", "json", stream)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    set_worker_id(None)


def test_json_line_carries_context_and_extras(lines):
    log = logging.getLogger("kiln.test")
    set_worker_id("host-abc")
    with log_context(job_id="j1", request_id="r1"):
        log.info("job %s started", "j1", extra={"step": 3})
    log.warning("outside")
    inside, outside = lines()
    assert inside["msg"] == "job j1 started" and inside["level"] == "INFO" and inside["logger"] == "kiln.test"
    assert (inside["job_id"], inside["worker_id"], inside["request_id"], inside["step"]) == ("j1", "host-abc", "r1", 3)
    assert inside["ts"].endswith("+00:00")
    assert "job_id" not in outside and "request_id" not in outside and outside["worker_id"] == "host-abc"


def test_worker_id_reaches_other_threads_job_id_does_not_leak(lines):
    set_worker_id("w9")
    with log_context(job_id="j2"):
        thread = threading.Thread(target=lambda: logging.getLogger("kiln.lease").info("renewed"))
        thread.start()
        thread.join()
    (line,) = lines()
    assert line["worker_id"] == "w9" and "job_id" not in line


def test_exception_is_one_json_line(lines):
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("kiln.test").exception("failed")
    (line,) = lines()
    assert "RuntimeError: boom" in line["exc"]


def test_text_format_appends_context():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("INFO", "text", stream)
        with log_context(job_id="j3"):
            logging.getLogger("kiln.t").info("hello")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert stream.getvalue().rstrip().endswith("hello [job_id=j3]")


@pytest.mark.parametrize("level, fmt, message",
                         [("LOUD", "json", "KILN_LOG_LEVEL"), ("INFO", "xml", "KILN_LOG_FORMAT")])
def test_bad_configuration_names_the_variable(level, fmt, message):
    with pytest.raises(ValueError, match=message):
        configure_logging(level, fmt, io.StringIO())


@pytest.fixture
def client():
    app = Flask(__name__)
    install_request_id(app)

    @app.get("/echo")
    def echo():
        logging.getLogger("kiln.api").info("handling")
        return {"request_id": current_request_id()}

    return app.test_client()


def test_request_id_taken_from_header_and_echoed(client, lines):
    response = client.get("/echo", headers={REQUEST_ID_HEADER: "abc-123"})
    assert response.headers[REQUEST_ID_HEADER] == "abc-123" and response.json["request_id"] == "abc-123"
    assert lines()[-1]["request_id"] == "abc-123"
    assert current_request_id() is None


@pytest.mark.parametrize("header", [None, "", "bad id; rm -rf", "x" * 200])
def test_request_id_generated_when_missing_or_malformed(client, header):
    headers = {REQUEST_ID_HEADER: header} if header is not None else {}
    first = client.get("/echo", headers=headers)
    second = client.get("/echo", headers=headers)
    generated = first.headers[REQUEST_ID_HEADER]
    assert len(generated) == 32 and generated == first.json["request_id"]
    assert generated != second.headers[REQUEST_ID_HEADER]
