"""Outbound HTTP that cannot be aimed at our own network: image fetches and webhooks.

Server-side request forgery guard: the host is resolved once, every address it resolves to must
be public (not private, loopback, link-local, multicast, reserved or unspecified) unless the
operator allows private addresses, and the connection goes to that checked address — so a DNS
answer that changes between check and connect (rebinding) cannot redirect it. Redirects are
followed by hand, each hop checked again, at most `max_redirects`. Time and size are capped.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from shared.errors import InputRefused

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


def resolve(host: str, port: int, allow_private: bool) -> str:
    """One checked address for `host`; every address it resolves to must pass `check_address`."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InputRefused(f"cannot resolve host {host!r}: {exc}", code="unresolvable_host") from None
    addresses = [info[4][0] for info in infos]
    for ip in addresses:
        check_address(ip, allow_private)
    return addresses[0]


def check_url(url: str, allow_private: bool) -> str:
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
    return resolve(parts.hostname, port, allow_private)


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


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
    ip = check_url(url, policy.allow_private)
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    kind = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    conn = kind(parts.hostname, port, ip, timeout=_left(deadline))
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request(method, path, body=body, headers={"User-Agent": "kiln", **headers})
        answer = conn.getresponse()
        reply_headers = {k.lower(): v for k, v in answer.getheaders()}
        data = _read_capped(answer, policy.max_bytes, deadline)
        return Reply(answer.status, reply_headers, data, url)
    except (OSError, http.client.HTTPException) as exc:
        raise InputRefused(f"fetching {parts.hostname} failed: {exc or type(exc).__name__}",
                           code="fetch_failed") from None
    finally:
        conn.close()


def _read_capped(answer: http.client.HTTPResponse, max_bytes: int, deadline: float) -> bytes:
    length = answer.getheader("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise InputRefused(f"the response is {length} bytes; at most {max_bytes} are allowed", code="too_large")
    chunks, size = [], 0
    while chunk := answer.read(65536):
        size += len(chunk)
        if size > max_bytes:
            raise InputRefused(f"the response is over {max_bytes} bytes, the most allowed", code="too_large")
        if time.monotonic() > deadline:
            raise InputRefused("the fetch took too long", code="fetch_timeout")
        chunks.append(chunk)
    return b"".join(chunks)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise InputRefused("the fetch took too long", code="fetch_timeout")
    return left
