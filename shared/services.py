"""Build the clients every process needs from the settings: job store, Celery app, storage."""

from __future__ import annotations

from celery import Celery

from shared.celery_app import make_celery
from shared.jobs.store import JobStore
from shared.settings import Settings
from shared.storage import Storage, make_storage


def job_store(settings: Settings) -> JobStore:
    return JobStore.from_url(settings.redis_url, settings.key_prefix, settings.retention_s)


def storage(settings: Settings) -> Storage:
    if settings.storage == "local":
        return make_storage("local", root=settings.storage_root)
    return make_storage(
        "s3",
        bucket=settings.s3_bucket,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key=settings.s3_access_key,
        secret_key=settings.s3_secret_key,
        path_style=settings.s3_path_style,
        create_bucket=settings.s3_create_bucket,
        presign_endpoint_url=settings.s3_presign_endpoint_url,
    )


def celery(settings: Settings) -> Celery:
    return make_celery(settings)
