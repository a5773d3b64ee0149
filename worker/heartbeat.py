"""The worker's heartbeat: its status into Redis every few seconds (see `shared.workers`)."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable

from shared.workers import WorkerRegistry, WorkerStatus

logger = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    def __init__(self, registry: WorkerRegistry, status: Callable[[], WorkerStatus], interval_s: float = 2.0):
        super().__init__(name="kiln-heartbeat", daemon=True)
        self.registry, self.status, self.interval_s = registry, status, interval_s
        self._stop = threading.Event()

    def run(self) -> None:
        while True:
            self.beat()
            if self._stop.wait(self.interval_s):
                return

    def beat(self, state: str | None = None) -> None:
        """Announce the status now; `state` overrides the one the status callable reports."""
        try:
            status = self.status()
            if state is not None:
                status.state = state
            self.registry.announce(status, ttl_s=self.interval_s * 3 + 1)
        except Exception:
            logger.warning("heartbeat failed; retrying", exc_info=True)

    def stop(self) -> None:
        self._stop.set()


def base_status(worker_id: str, device: str, queues: list[str], slots: int) -> WorkerStatus:
    return WorkerStatus(id=worker_id, host=socket.gethostname(), pid=os.getpid(), device=device,
                        queues=queues, slots=slots, started_at=time.time())
