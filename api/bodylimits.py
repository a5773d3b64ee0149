"""Request bodies are bounded before any parsing work, and submissions are rate-checked first.

Order for every request (a `before_request` hook installed after authentication):
1. a submission whose key has no token left is refused (429) before its body is read;
2. the byte size is checked against the limit of its content type (413): `Content-Length` when
   sent, else reading stops at the limit;
3. a JSON body (and the JSON `request` part of a multipart body) is checked by a cheap byte
   scan — C-speed `bytes.count`, plus a walk over brackets and whole strings only when there
   are enough brackets to matter — for its number of keys + elements and its nesting depth
   (400), so neither a 3-million-key object nor 5,000 nested `[` reaches the JSON parser.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from flask import Flask, Request, request
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from shared.errors import BadRequest, KilnError, PayloadTooLarge
from shared.settings import Settings

_MARKS = re.compile(rb'[\[\]{}"\\]')
_OPENERS, _CLOSERS, _QUOTE, _BACKSLASH = frozenset(b"[{"), frozenset(b"]}"), ord('"'), ord("\\")
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b',:"\\[]{}')
MARKS_PER_ITEM = 8  # quotes, brackets and backslashes one key or element may need, generously
# Endpoints that check the key's submission tokens before their body is read.
RATE_CHECKED = frozenset({"jobs.submit"})


@dataclass(frozen=True)
class BodyLimits:
    json_bytes: int
    upload_bytes: int
    other_bytes: int
    json_items: int
    json_depth: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "BodyLimits":
        return cls(settings.json_max_bytes, settings.upload_max_bytes, settings.form_max_bytes,
                   settings.json_max_items, settings.json_max_depth)

    def max_bytes(self, mimetype: str) -> tuple[int, str]:
        """The byte limit for a content type, and its name in errors."""
        if mimetype == "application/json" or mimetype.endswith("+json"):
            return self.json_bytes, "JSON"
        if mimetype == "multipart/form-data":
            return self.upload_bytes, "multipart"
        return self.other_bytes, mimetype or "untyped"


def check_json_shape(data: bytes, limits: BodyLimits) -> None:
    """Refuse JSON text with more than `json_items` keys + elements or nesting over `json_depth`.

    Counts are upper bounds (commas, colons and quotes inside strings count too), so they never
    let through a body the parser would find bigger. The depth walk visits only brackets, quotes
    and backslashes, whose number the count bounds, so it stays linear and short.
    """
    structure = data.translate(None, _NOT_STRUCTURE)  # one C pass; small for any sane body
    items = structure.count(b",") + structure.count(b":") + 1
    budget = MARKS_PER_ITEM * limits.json_items
    if items > limits.json_items:
        raise _too_many_items(limits)
    openers = structure.count(b"[") + structure.count(b"{")
    if openers > limits.json_depth and _depth(data, limits.json_depth, budget) > limits.json_depth:
        raise BadRequest(f"the JSON body nests deeper than {limits.json_depth} levels, the most allowed",
                         field="body", code="json_too_deep")
    if len(structure) - items + 1 > budget:  # brackets, quotes and backslashes
        raise _too_many_items(limits)


def _too_many_items(limits: BodyLimits) -> BadRequest:
    return BadRequest(f"the JSON body has over {limits.json_items} keys and elements, the most allowed",
                      field="body", code="json_too_many_items")


def _depth(data: bytes, stop: int, budget: int) -> int:
    """The deepest bracket nesting outside strings, walking at most `budget` brackets, quotes and
    backslashes and stopping once past `stop`."""
    depth = deepest = 0
    in_string, skip = False, -1
    for match in itertools.islice(_MARKS.finditer(data), budget):
        pos, char = match.start(), data[match.start()]
        if pos == skip:  # the character after a backslash is escaped
            continue
        if in_string:
            if char == _BACKSLASH:
                skip = pos + 1
            elif char == _QUOTE:
                in_string = False
        elif char == _QUOTE:
            in_string = True
        elif char in _OPENERS:
            depth += 1
            deepest = max(deepest, depth)
            if deepest > stop:
                break
        elif char in _CLOSERS:
            depth -= 1
    return deepest


class BodyTimeout(KilnError):
    http_status = 408
    code = "body_timeout"


def check_body(req: Request, limits: BodyLimits) -> None:
    """Size first (413), then the JSON shape (400); reads at most the limit. A body that stops
    arriving (the socket's read timeout, set by `api.gunicorn_worker`) is a 408."""
    cap, kind = limits.max_bytes(req.mimetype)
    if req.content_length is not None and req.content_length > cap:
        raise _too_large(kind, cap, req.content_length)
    sized = req.content_length is not None
    # werkzeug stops a body of unknown length (chunked) quietly at the limit; one byte over the cap
    # tells a body that is too large from one that just fits.
    req.max_content_length = cap if sized else cap + 1
    if kind == "JSON":
        data = _read(kind, cap, lambda: req.get_data(cache=True))
        if len(data) > cap:
            raise _too_large(kind, cap)
        check_json_shape(data, limits)
    elif kind == "multipart":
        part = _read(kind, cap, lambda: req.form.get("request"))
        if part:
            check_json_shape(part.encode(), limits)


def _read(kind: str, cap: int, read):
    try:
        return read()
    except RequestEntityTooLarge:
        raise _too_large(kind, cap) from None
    except (TimeoutError, ClientDisconnected) as exc:  # werkzeug reports a failed read as a disconnect
        if not isinstance(exc, TimeoutError) and not isinstance(exc.__context__, TimeoutError):
            raise
        raise BodyTimeout(f"the {kind} request body stopped arriving before its end; send it whole",
                          field="body") from None


def _too_large(kind: str, cap: int, size: int | None = None) -> PayloadTooLarge:
    told = f" is {size} bytes;" if size is not None else " is too large:"
    return PayloadTooLarge(f"the {kind} request body{told} at most {cap} bytes are allowed",
                           field="body", code="body_too_large")


def install_body_limits(app: Flask, settings: Settings) -> None:
    """Register the checks; call after `install_auth` so the principal is known."""
    from api.auth import principal

    limits = BodyLimits.from_settings(settings)
    app.config["MAX_CONTENT_LENGTH"] = max(limits.json_bytes, limits.upload_bytes, limits.other_bytes)

    @app.before_request
    def _bound_body():
        if request.endpoint in RATE_CHECKED:
            app.extensions["kiln"].quotas.check_token(principal().key_id)
        if request.method in ("GET", "HEAD", "OPTIONS") and not request.content_length:
            return
        check_body(request, limits)
