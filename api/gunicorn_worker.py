"""The API's gunicorn worker: gevent, one greenlet per connection, so an open event stream costs a
greenlet and a socket rather than a thread (`--worker-class api.gunicorn_worker.KilnWorker`).

Capacity follows the settings, so the limits the API enforces match what a process can hold:
`sse_max_streams` event streams plus `api_max_requests` other connections. The event endpoint
refuses streams beyond its share (503), so streams can never take the connections that
`/healthz` and ordinary requests need. `--threads` sizes gevent's native thread pool, which runs
the blocking calls gevent cannot make cooperative (DNS resolution of fetched URLs).

Socket reads and writes time out after gunicorn's `--timeout`, so a stalled request body ends in a
JSON 408 rather than holding a connection. A request whose body the app refused unread (413 before reading) closes its connection instead of
being drained, so a 40 MiB refused body costs nothing more. Requests gunicorn's own HTTP parser
rejects before the app sees them (a control character in a
header value, a malformed request line) get the API's JSON error body instead of gunicorn's HTML.
"""

from __future__ import annotations

import html
import json
import re

from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.workers.ggevent import GeventWorker

_STATUS_LINE = re.compile(rb"^HTTP/1\.[01] (\d{3}) ([^\r\n]*)\r\n")
_MESSAGE = re.compile(rb"</h1>\s*(.*?)\s*</body>", re.S)
DRAIN_BYTES = 64 * 1024  # an unread remainder up to this is drained to keep the connection


class KilnWorker(GeventWorker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        from shared.settings import get_settings

        settings = get_settings()
        self.worker_connections = settings.sse_max_streams + settings.api_max_requests

    def init_process(self) -> None:
        import gevent

        gevent.get_hub().threadpool.maxsize = max(1, self.cfg.threads)
        super().init_process()

    def handle_request(self, listener_name, req, sock, addr):
        # Each socket read or write may wait at most `--timeout` seconds (gunicorn's own setting,
        # 30 by default): a client that promises a body and stalls gets a 408 instead of holding
        # its connection forever (`api.bodylimits`); a stream reader that stops reading is dropped.
        sock.settimeout(self.cfg.timeout or None)  # `--timeout 0` is none; settimeout(0) is non-blocking
        kept = super().handle_request(listener_name, req, sock, addr)
        if _body_left(req):  # refused unread (413): close rather than drain megabytes to keep it alive
            raise StopIteration("request body left unread")
        return kept

    def handle_error(self, req, client, addr, exc) -> None:
        super().handle_error(req, JsonErrors(client), addr, exc)


def _body_left(req) -> bool:
    """Whether the app left part of the request body unread (more than a small remainder)."""
    reader = getattr(getattr(req, "body", None), "reader", None)
    if isinstance(reader, LengthReader):
        return reader.length > DRAIN_BYTES
    if isinstance(reader, ChunkedReader):
        return reader.parser.gi_frame is not None  # its chunks were not all read
    return False


class JsonErrors:
    """A client socket whose error page (gunicorn writes it in one `sendall`) goes out as JSON."""

    def __init__(self, sock) -> None:
        self._sock = sock

    def __getattr__(self, name: str):
        return getattr(self._sock, name)

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(as_json_error(data))


def as_json_error(page: bytes) -> bytes:
    """gunicorn's `HTTP/1.1 400 Bad Request ... <html>` error response, rewritten as our JSON error."""
    status = _STATUS_LINE.match(page)
    if not status:
        return page
    code, reason = int(status.group(1)), status.group(2).decode("latin-1")
    found = _MESSAGE.search(page)
    message = html.unescape(found.group(1).decode("latin-1")) if found else ""
    name = reason.lower().replace(" ", "_") or "bad_request"
    body = json.dumps({"error": {"code": name, "message": message or reason}}).encode()
    head = (f"HTTP/1.1 {code} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Content-Type-Options: nosniff\r\n\r\n")
    return head.encode("latin-1") + body
