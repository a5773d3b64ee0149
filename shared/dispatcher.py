"""The dispatcher: moves waiting jobs fairly into Celery and delivers webhooks.

Run it as its own process (`python -m shared.dispatcher`) or, the default, as two daemon threads
inside each API process (`KILN_DISPATCH_IN_API=true`). Any number may run at once: every step
is an atomic Redis script, so they share the work without double dispatch (see
`shared.fairqueue` and `shared.webhooks`).
"""

from __future__ import annotations

import logging
import signal
import threading
import time

import redis

from shared import services
from shared.affinity import route
from shared.auth import KeyStore
from shared.celery_app import enqueue_job
from shared.fairqueue import FairQueue
from shared.jobs.store import JobStore
from shared.settings import Settings, get_settings
from shared.webhooks import WebhookConfig, Webhooks
from shared.workers import WorkerRegistry

logger = logging.getLogger(__name__)
RESEND_AFTER_S = 30.0


def make_webhooks(settings: Settings, client: redis.Redis) -> Webhooks:
    config = WebhookConfig(max_attempts=settings.webhook_max_attempts, backoff_s=settings.webhook_backoff_s,
                           timeout_s=settings.webhook_timeout_s, allow_private=settings.fetch_allow_private,
                           on_start=settings.webhook_on_start, public_url=settings.public_url,
                           retention_s=settings.retention_s)
    keys = KeyStore(client, settings.key_prefix)
    return Webhooks(client, settings.key_prefix, config, keys.webhook_secret)


class Dispatcher:
    """One round of fair dispatch per `dispatch_once`; `run` loops until stopped."""

    def __init__(self, settings: Settings, send=None) -> None:
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        self.jobs = JobStore(self.redis, settings.key_prefix, settings.retention_s)
        self.broker = redis.Redis.from_url(settings.celery_broker_url, decode_responses=True)
        self.fair = FairQueue(self.redis, settings.key_prefix)
        self.registry = WorkerRegistry(self.redis, settings.key_prefix)
        self.webhooks = make_webhooks(settings, self.redis)
        self._send = send or self._celery_send
        self._celery = None
        self.stopped = threading.Event()

    def _celery_send(self, job_id: str, queue: str) -> None:
        """Send to a worker already holding the job's model if one has room (`shared.affinity`)."""
        if self._celery is None:
            self._celery = services.celery(self.settings)
        model = self.jobs.model(job_id)
        if model:
            queue = route(self.registry, self.broker, model, queue)
        enqueue_job(self._celery, job_id, queue)

    def dispatch_once(self) -> int:
        """Fill every queue up to the configured depth, round-robin over keys; returns jobs sent."""
        sent = 0
        for job_id, queue in self.fair.stale(RESEND_AFTER_S):
            self._send(job_id, queue)
            self.fair.sent(job_id)
        for queue in self.fair.queues():
            room = self.settings.dispatch_queue_depth - self.broker.llen(queue)
            while room > 0 and (job_id := self.fair.take(queue)):
                status = self.jobs.status(job_id)
                if status is None or not status.terminal:
                    self._send(job_id, queue)
                    room -= 1
                    sent += 1
                self.fair.sent(job_id)
        return sent

    def run_dispatch(self) -> None:
        self._loop("dispatch", self.dispatch_once)

    def run_webhooks(self) -> None:
        self._loop("webhooks", lambda: self.webhooks.scan() + self.webhooks.deliver_due())

    def _loop(self, name: str, step) -> None:
        while not self.stopped.is_set():
            try:
                busy = step()
            except Exception:  # a Redis or broker blip must not end the loop
                logger.exception("%s loop step failed; retrying", name)
                busy = 0
            if not busy:
                self.stopped.wait(self.settings.dispatch_interval_s)

    def start_threads(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=self.run_dispatch, name="kiln-dispatch", daemon=True),
                   threading.Thread(target=self.run_webhooks, name="kiln-webhooks", daemon=True)]
        for thread in threads:
            thread.start()
        return threads

    def stop(self) -> None:
        self.stopped.set()


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    dispatcher = Dispatcher(get_settings())
    signal.signal(signal.SIGTERM, lambda *_: dispatcher.stop())
    threads = dispatcher.start_threads()
    logger.info("Kiln dispatcher running (queue depth %d)", dispatcher.settings.dispatch_queue_depth)
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
    except KeyboardInterrupt:
        dispatcher.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
