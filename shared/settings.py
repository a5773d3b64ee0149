"""One settings object for every Kiln process, read from the environment.

Layers, lowest first: the defaults below, an optional env file named by `KILN_ENV_FILE`,
then `KILN_*` environment variables. Values are validated at start; a bad value stops the
process with a message naming the variable.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class SettingsError(RuntimeError):
    """The configuration is invalid; the message names each offending variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", extra="ignore", frozen=True)

    # Redis: job records, leases, worker status — and the Celery broker unless told otherwise.
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = Field(default=None, description="Celery broker; defaults to redis_url")
    key_prefix: str = Field(default="kiln", pattern=r"^[A-Za-z0-9_.-]+$")

    # Storage of outputs.
    storage: Literal["local", "s3"] = "local"
    storage_root: Path = REPO_ROOT / "var" / "outputs"
    s3_bucket: str = "kiln"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_path_style: bool = True
    s3_create_bucket: bool = False
    s3_presign_endpoint_url: str | None = Field(
        default=None, description="address clients use for presigned URLs, when not s3_endpoint_url")
    output_url_ttl_s: int = Field(default=3600, ge=60, le=7 * 24 * 3600)

    # Models: a JSON catalog file; the default serves the bundled model.
    models_file: Path | None = None
    models_dir: Path = REPO_ROOT / "var" / "models"

    # API.
    secret_key: str | None = Field(
        default=None, description="signs dashboard sessions; unset: a random one, kept in Redis")
    public_url: str = Field(default="http://127.0.0.1:8000", pattern=r"^https?://[^/?#@\s]+(/[^?#\s]*)?$",
                            description="the API's address in every URL it returns; never the Host header")
    max_pixels: int = Field(default=1024 * 1024, ge=64 * 64)
    max_num_images: int = Field(default=8, ge=1, le=64)
    max_steps: int = Field(default=150, ge=1, le=1000)

    # Auth: API keys (hashed in Redis). `disabled` is the local single-user mode: every request
    # acts as one local admin. Only `make up` / the test stack should ever set it.
    auth: Literal["enabled", "disabled"] = "enabled"
    bootstrap_admin_key: str | None = Field(
        default=None, min_length=24, description="a secret registered as an admin key at start")

    # Quotas, per API key: a token bucket on submissions and a cap on queued + running jobs.
    rate_limit_per_s: float = Field(default=2.0, gt=0, description="submissions refilled per second")
    rate_limit_burst: int = Field(default=20, ge=1)
    max_active_jobs: int = Field(default=50, ge=1, description="queued + running jobs per key")
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60)

    # Fair dispatch: jobs wait in per-key lists; a dispatcher moves them round-robin into Celery
    # while the broker queue holds fewer than this many messages.
    dispatch_queue_depth: int = Field(default=4, ge=1)
    dispatch_interval_s: float = Field(default=0.2, gt=0)
    dispatch_in_api: bool = Field(default=True, description="run dispatcher + webhooks in the API process")

    # Inputs: image uploads and fetches.
    input_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    input_max_pixels: int = Field(default=4096 * 4096, ge=64 * 64)
    fetch_timeout_s: float = Field(default=10.0, gt=0)
    fetch_max_redirects: int = Field(default=3, ge=0, le=10)
    fetch_allow_private: bool = Field(default=False, description="allow URLs on private/loopback addresses")
    fetch_max_concurrent: int = Field(default=16, ge=1, description="input URL fetches at once per API process")

    # Request bodies, checked before parsing (api.bodylimits). JSON may carry two base64 images.
    json_max_bytes: int = Field(default=28 * 1024 * 1024, ge=1024)
    upload_max_bytes: int = Field(default=24 * 1024 * 1024, ge=1024, description="multipart bodies")
    form_max_bytes: int = Field(default=64 * 1024, ge=1024, description="other bodies (dashboard forms)")
    json_max_items: int = Field(default=10_000, ge=16, description="keys + array elements in one JSON body")
    json_max_depth: int = Field(default=32, ge=2, description="nesting of JSON objects and arrays")

    # Events and webhooks.
    sse_max_lifetime_s: float = Field(default=600.0, gt=0)
    sse_heartbeat_s: float = Field(default=15.0, gt=0)
    sse_max_streams: int = Field(default=1000, ge=1, description="open event streams per API process")
    sse_max_streams_per_key: int = Field(default=20, ge=1, description="open event streams per API key")
    api_max_requests: int = Field(
        default=500, ge=8, description="other connections per API process, beside the event streams")
    sse_key_recheck_s: float = Field(default=5.0, gt=0, description="how often a stream re-checks its key")
    api_redis_connections: int = Field(default=64, ge=4, description="Redis connections per API process")
    webhook_secret: str | None = Field(default=None, min_length=16, description="signs every webhook")
    webhook_max_attempts: int = Field(default=6, ge=1, le=20)
    webhook_backoff_s: float = Field(default=2.0, gt=0, description="first retry delay; doubles")
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_on_start: bool = False

    # Dispatch: Celery on Redis, at-least-once (see docs/operations.md for the trade-off).
    visibility_timeout_s: int = Field(default=3600, ge=1)
    unacked_restore_interval_s: float = Field(default=5.0, gt=0)
    lease_ttl_s: float = Field(default=30.0, gt=0.5)
    reaper_interval_s: float = Field(default=5.0, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=20)
    job_timeout_s: float = Field(default=1800.0, gt=0)
    infra_retry_s: float = Field(
        default=30.0, gt=0, description="how long a worker retries a call to Redis/storage in place "
        "before handing the job back to its queue (never failing it)")
    preload_default_model: bool = Field(default=True, description="load the catalog's default model at start")
    retention_s: int = Field(default=7 * 24 * 3600, ge=60)

    # Worker.
    device: str | None = Field(default=None, description="cpu, cuda, cuda:1 …; default: CUDA if present")
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    worker_queues: str = "kiln.default"
    torch_threads: int | None = Field(
        default=None, ge=1, description="CPU threads for torch; default: torch's own (all cores)")
    worker_slots: int = Field(default=8, ge=1, le=256, description="jobs one worker runs at once")
    max_batch_rows: int = Field(default=16, ge=1, description="most samples in one batched model call")
    pipeline_cache_bytes: int = Field(default=8 * 1024**3, ge=0)
    lora_cache_bytes: int = Field(default=1024**3, ge=0, description="LoRA adapters one loaded model keeps (LRU)")
    progress_interval_s: float = Field(default=0.25, ge=0)
    metrics_port: int = Field(default=9400, ge=0, le=65535, description="worker /metrics + health port; 0: off")

    # Logs (shared.logging.configure_logging).
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @model_validator(mode="after")
    def _check_s3(self) -> "Settings":
        if self.storage == "s3" and not self.s3_bucket:
            raise ValueError("KILN_S3_BUCKET is required when KILN_STORAGE=s3")
        return self

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or self.redis_url


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (and `KILN_ENV_FILE`), raising `SettingsError`."""
    env_file = os.environ.get("KILN_ENV_FILE")
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = "; ".join(
            f"KILN_{'_'.join(str(p) for p in err['loc']).upper() or '?'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid Kiln settings: {problems}") from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
