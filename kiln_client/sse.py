"""A minimal Server-Sent Events parser (WHATWG HTML, "server-sent events" §9.2.6)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    event: str
    data: str
    id: str | None = None


def parse(lines: Iterable[str]) -> Iterator[Event]:
    """Events from decoded lines (without their line ends); comments and retry lines skipped."""
    kind, data, event_id = "message", [], None
    for line in lines:
        if line == "":
            if data:
                yield Event(kind, "\n".join(data), event_id)
            kind, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            kind = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
    if data:
        yield Event(kind, "\n".join(data), event_id)
