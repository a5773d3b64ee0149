"""The Celery application both sides share: the API sends by task name, workers consume.

Delivery is at-least-once: late acknowledgement, rejection when the worker process is lost,
one message prefetched per process. A task carries only the job id; the job record (with its
lease) decides whether a delivery runs. See docs/operations.md for the timings this gives.
"""

from __future__ import annotations

from celery import Celery

from shared.settings import Settings

RUN_JOB_TASK = "kiln.run_job"
DEFAULT_QUEUE = "kiln.default"


def make_celery(settings: Settings) -> Celery:
    app = Celery("kiln", broker=settings.celery_broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=DEFAULT_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # kombu ≥ 5.6: sweep for unacknowledged messages of dead workers this often.
            "unacked_restore_interval": settings.unacked_restore_interval_s,
            "unacked_restore_throttle": 1,
        },
    )
    return app


def enqueue_job(app: Celery, job_id: str, queue: str) -> None:
    """Send the run-job task for `job_id` to `queue`."""
    app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue)
