"""The job record and its state machine.

    queued ──▶ running ──▶ succeeded
      │  ▲        │ ├────▶ failed
      │  └────────┘ └────▶ canceled        (running → queued: the worker died; retried)
      └──▶ canceled

A terminal status never changes again. Transitions happen only inside the Redis scripts of
`shared.jobs.store`, each atomic.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any


class Status(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELED})


class Phase(str, enum.Enum):
    """What a running job is doing."""

    LOADING = "loading"
    DENOISING = "denoising"
    UPLOADING = "uploading"


class Outcome(str, enum.Enum):
    """What one delivery of a job came to (the worker's answer, for logs and tests): a terminal
    status it wrote, or why it wrote none."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    MISSING = "missing"  # no such job
    TERMINAL = "terminal"  # already finished: a duplicate delivery
    LEASED = "leased"  # another live worker runs it
    EXHAUSTED = "exhausted"  # out of attempts: failed without running
    LEASE_LOST = "lease_lost"  # this worker's lease expired while running; nothing written
    SUPERSEDED = "superseded"  # finished here, but the record had moved on; result dropped


@dataclass(frozen=True)
class Output:
    """One stored image of a job."""

    index: int
    key: str
    size: int
    seed: int
    content_type: str
    width: int
    height: int


@dataclass(frozen=True)
class Job:
    id: str
    owner: str
    model: str
    params: dict[str, Any]
    status: Status
    queue: str
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    progress_step: int = 0
    progress_total: int = 0
    worker: str | None = None
    attempts: int = 0
    cancel_requested: bool = False
    error: dict[str, str] | None = None
    outputs: list[Output] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    request_id: str | None = None
    phase: Phase | None = None  # while running
    key_id: str | None = None  # the API key that submitted it
    preview_key: str | None = None
    preview_step: int = 0

    # Hash fields holding JSON rather than plain strings.
    JSON_FIELDS = ("params", "error", "outputs", "timings")

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> "Job":
        def num(name: str, kind=float, default=None):
            value = raw.get(name)
            return kind(value) if value not in (None, "") else default

        outputs = [Output(**o) for o in json.loads(raw.get("outputs") or "[]")]
        return cls(
            id=raw["id"],
            owner=raw.get("owner", ""),
            model=raw.get("model", ""),
            params=json.loads(raw.get("params") or "{}"),
            status=Status(raw["status"]),
            queue=raw.get("queue", ""),
            created_at=num("created_at"),
            updated_at=num("updated_at", default=num("created_at")),
            started_at=num("started_at"),
            finished_at=num("finished_at"),
            progress_step=num("progress_step", int, 0),
            progress_total=num("progress_total", int, 0),
            worker=raw.get("worker") or None,
            attempts=num("attempts", int, 0),
            cancel_requested=raw.get("cancel_requested") == "1",
            error=json.loads(raw["error"]) if raw.get("error") else None,
            outputs=outputs,
            timings=json.loads(raw.get("timings") or "{}"),
            request_id=raw.get("request_id") or None,
            phase=Phase(raw["phase"]) if raw.get("phase") else None,
            key_id=raw.get("key_id") or None,
            preview_key=raw.get("preview_key") or None,
            preview_step=num("preview_step", int, 0),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        data["phase"] = self.phase.value if self.phase else None
        return data
