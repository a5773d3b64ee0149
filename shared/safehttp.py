"""Outbound HTTP that cannot be aimed at our own network: image fetches and webhooks.

Server-side request forgery guard: the host is resolved once, every address it resolves to must
be public (not private, loopback, link-local, multicast, reserved or unspecified) unless the
operator allows private addresses, and the connection goes to that checked address — so a DNS
answer that changes between check and connect (rebinding) cannot redirect it. Redirects are
followed by hand, each hop checked again, at most `max_redirects`. Time and size are capped.

The time limit holds for the whole exchange — connect, TLS, sending, status line, headers and
body, over every redirect: the connection's socket sets its timeout to the time left before each
send and receive, so a server dripping one byte at a time cannot stretch a fetch past
`timeout_s`. `FetchGate` bounds how many fetches a process runs at once (the API answers 503
with `Retry-After` beyond it), so slow remotes cannot hold every request slot.
"""

from __future__ import annotations

import http.client
import io
import ipaddress
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from shared.errors import InputRefused
from shared.ratelimit import Overloaded

REDIRECTS = {301, 302, 303, 307, 308}


@dataclass(frozen=True)
class Policy:
    timeout_s: float = 10.0
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 3
    allow_private: bool = False


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    url: str


def check_address(ip: str, allow_private: bool) -> None:
    """Raise `InputRefused` unless `ip` is a public unicast address (or private is allowed)."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    if allow_private and not (addr.is_multicast or addr.is_unspecified):
        return
    if not addr.is_global or addr.is_multicast or addr.is_unspecified or addr.is_reserved:
        raise InputRefused(f"refusing to connect to {addr}: private, loopback, link-local or reserved "
                           "addresses are not allowed", code="address_not_allowed")


# Name lookups run on a few resolver threads so a caller waits at most until its deadline: the C
# resolver has no timeout of its own, and a hostile DNS server could otherwise hold a request thread.
DNS_TIMEOUT_S = 5.0
_resolver = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kiln-dns")


def _lookup(host: str, port: int, deadline: float | None) -> list:
    wait = DNS_TIMEOUT_S if deadline is None else min(DNS_TIMEOUT_S, max(deadline - time.monotonic(), 0.0))
    future = _resolver.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        return future.result(timeout=wait)
    except FutureTimeout:
        future.cancel()
        raise InputRefused(f"resolving {host!r} took over {wait:.3g} s, the most allowed",
                           code="fetch_timeout") from None


def resolve(host: str, port: int, allow_private: bool, deadline: float | None = None) -> str:
    """One checked address for `host`; every address it resolves to must pass `check_address`.
    The lookup ends by `deadline` (a `time.monotonic()` value), and within `DNS_TIMEOUT_S` in any case."""
    try:
        infos = _lookup(host, port, deadline)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputRefused(f"cannot resolve host {host!r}: {exc}", code="unresolvable_host") from None
    addresses = [info[4][0] for info in infos]
    for ip in addresses:
        check_address(ip, allow_private)
    return addresses[0]


def check_url(url: str, allow_private: bool, deadline: float | None = None) -> str:
    """Refuse a URL we must not connect to (scheme, credentials, address); else its checked IP."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputRefused(f"only http and https URLs are allowed (got {url[:100]!r})", code="bad_url")
    if parts.username or parts.password:
        raise InputRefused("URLs with credentials are not allowed", code="bad_url")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise InputRefused(f"bad port in {url[:100]!r}", code="bad_url") from None
    return resolve(parts.hostname, port, allow_private, deadline)


class FetchGate:
    """At most `limit` fetches at once in this process; beyond that `Overloaded` (503) at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    @contextmanager
    def slot(self):
        if not self._slots.acquire(blocking=False):
            raise Overloaded(f"this server is already fetching {self.limit} URLs; retry shortly",
                             retry_after=2, code="too_many_fetches")
        try:
            yield
        finally:
            self._slots.release()


class _DeadlineSocket:
    """A connected socket (plain or TLS) whose timeout is reset to the time left before every
    send and receive; `http.client` reads it through `makefile`, which reads through this."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock, self.deadline = sock, deadline

    def __getattr__(self, name: str):
        return getattr(self._sock, name)

    def _arm(self) -> socket.socket:
        self._sock.settimeout(_left(self.deadline))
        return self._sock

    def recv(self, *args):
        return self._arm().recv(*args)

    def recv_into(self, *args):
        return self._arm().recv_into(*args)

    def send(self, *args):
        return self._arm().send(*args)

    def sendall(self, *args):
        return self._arm().sendall(*args)

    def makefile(self, mode: str = "rb", *args, **kwargs):
        self._sock._io_refs += 1
        return io.BufferedReader(socket.SocketIO(self, "rb"))  # http.client only reads this way


def _connect(ip: str, port: int, deadline: float) -> socket.socket:
    return socket.create_connection((ip, port), _left(deadline))


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, ip: str, deadline: float) -> None:
        super().__init__(host, port)
        self._ip, self._deadline = ip, deadline

    def connect(self) -> None:
        self.sock = _DeadlineSocket(_connect(self._ip, self.port, self._deadline), self._deadline)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, deadline: float) -> None:
        super().__init__(host, port, context=ssl.create_default_context())
        self._ip, self._deadline = ip, deadline

    def connect(self) -> None:
        raw = _connect(self._ip, self.port, self._deadline)
        try:
            tls = self._context.wrap_socket(raw, server_hostname=self.host, do_handshake_on_connect=False)
            tls.settimeout(_left(self._deadline))  # the handshake is one call: one deadline
            tls.do_handshake()
        except BaseException:
            raw.close()
            raise
        self.sock = _DeadlineSocket(tls, self._deadline)


# Input image fetches of this process (sized by the API at start: `set_input_fetch_limit`).
input_fetches = FetchGate(16)


def set_input_fetch_limit(limit: int) -> None:
    global input_fetches
    if limit != input_fetches.limit:
        input_fetches = FetchGate(limit)


def request(method: str, url: str, policy: Policy, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> Reply:
    """Send one request (following up to `policy.max_redirects` redirects for GET)."""
    deadline = time.monotonic() + policy.timeout_s
    for _ in range(policy.max_redirects + 1):
        reply = _once(method, url, policy, body, headers or {}, deadline)
        location = reply.headers.get("location")
        if reply.status not in REDIRECTS or not location or method != "GET" or policy.max_redirects == 0:
            return reply
        url = urljoin(url, location)
    raise InputRefused(f"more than {policy.max_redirects} redirects", code="too_many_redirects")


def _once(method: str, url: str, policy: Policy, body: bytes | None, headers: dict[str, str],
          deadline: float) -> Reply:
    ip = check_url(url, policy.allow_private, deadline)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    kind = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    conn = kind(parts.hostname, port, ip, deadline)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, path, body=body, headers={"User-Agent": "kiln", **headers})
        answer = conn.getresponse()
        reply_headers = {k.lower(): v for k, v in answer.getheaders()}
        data = _read_capped(answer, policy.max_bytes, deadline)
        return Reply(answer.status, reply_headers, data, url)
    except TimeoutError:
        raise InputRefused(f"fetching {parts.hostname} took over {policy.timeout_s:g} s, the most allowed",
                           code="fetch_timeout") from None
    except (OSError, http.client.HTTPException) as exc:
        raise InputRefused(f"fetching {parts.hostname} failed: {exc or type(exc).__name__}",
                           code="fetch_failed") from None
    finally:
        conn.close()


def _read_capped(answer: http.client.HTTPResponse, max_bytes: int, deadline: float) -> bytes:
    length = answer.getheader("content-length")
    if length and length.isascii() and length.isdigit() and int(length) > max_bytes:
        raise InputRefused(f"the response is {length} bytes; at most {max_bytes} are allowed", code="too_large")
    chunks, size = [], 0
    while chunk := answer.read(65536):
        size += len(chunk)
        if size > max_bytes:
            raise InputRefused(f"the response is over {max_bytes} bytes, the most allowed", code="too_large")
        if time.monotonic() > deadline:
            raise TimeoutError("the fetch deadline passed")
        chunks.append(chunk)
    return b"".join(chunks)


def _left(deadline: float) -> float:
    """Seconds until `deadline`; `TimeoutError` (a socket timeout) once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the fetch deadline passed")
    return left
