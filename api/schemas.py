"""Response and admin-request schemas. Handlers build responses through these models and the
OpenAPI document is generated from them (and from `JobRequest`), so the two cannot drift."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.auth import NAME_MAX, OWNER_PATTERN
from shared.jobs.record import Phase, Status


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Progress(BaseModel):
    step: int
    total: int
    fraction: float


class OutputView(BaseModel):
    index: int
    url: str = Field(description="an API URL; it answers with the image or redirects to a presigned URL")
    content_type: str
    width: int
    height: int
    seed: int
    size: int


class WebhookAttempt(BaseModel):
    event: str
    attempt: int
    at: float
    ok: bool
    status_code: int | None = None
    error: str | None = None
    duration_s: float


class WebhookView(BaseModel):
    url: str
    attempts: list[WebhookAttempt]


class PreviewView(BaseModel):
    step: int
    url: str = Field(description="the latest preview image (PNG); it changes as the job runs")


class JobView(BaseModel):
    id: str
    status: Status
    phase: Phase | None = Field(
        default=None, description="what a running job is doing")
    preview: PreviewView | None = Field(default=None, description="with preview_every, while running and after")
    model: str
    params: dict[str, Any]
    progress: Progress
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    attempts: int
    worker: str | None
    cancel_requested: bool
    error: dict[str, str] | None
    timings: dict[str, float]
    outputs: list[OutputView]
    url: str
    webhook: WebhookView | None = None


class JobList(BaseModel):
    jobs: list[JobView]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null at the end")


class KeyCreate(BaseModel):
    """The body of `POST /v1/keys`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["user", "admin"] = "user"
    name: str = Field(default="", max_length=NAME_MAX)
    owner: str | None = Field(default=None, pattern=OWNER_PATTERN,  # the dashboard checks the same
                              description="tenant id; keys with one owner share jobs (default: the key id)")


class KeyUsage(BaseModel):
    requests: int
    submissions: int


class KeyView(BaseModel):
    id: str
    name: str
    role: Literal["user", "admin"]
    owner: str
    created_at: float | None
    revoked_at: float | None
    last_used_at: float | None
    usage: KeyUsage


class KeyCreated(KeyView):
    secret: str = Field(description="the bearer token; shown once, store it now")


class KeyList(BaseModel):
    keys: list[KeyView]


class Me(BaseModel):
    key_id: str
    owner: str
    role: Literal["user", "admin"]
    webhook_secret: str = Field(description="verifies the Kiln-Signature of this key's webhooks")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


class ModelLimits(BaseModel):
    max_width: int
    max_height: int
    max_pixels: int = Field(description="width × height")
    max_cost: int = Field(description="per-job budget of width × height × steps × num_images")


class ModelView(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    family: str
    tasks: list[str]
    defaults: dict[str, Any] = Field(description="what a request that leaves a field out gets")
    limits: ModelLimits = Field(description="a job over any of these is refused with 422 naming the field")
    fields: list[str] = Field(description="family-only request fields this model reads (FLUX: true_cfg_scale, "
                                          "max_sequence_length; SD3: max_sequence_length)")
    schedulers: list[str] = Field(description="the scheduler names that suit this model")
    size_multiple: int = Field(description="width and height must be multiples of this")
    guidance_distilled: bool = Field(description="FLUX.1-dev: guidance_scale is embedded guidance")


class ModelList(BaseModel):
    models: list[ModelView]
    schedulers: list[str]


class LoraView(BaseModel):
    name: str
    base: str = Field(description="the model name or family the adapter is for")
    description: str


class LoraList(BaseModel):
    loras: list[LoraView]


class SchedulerView(BaseModel):
    name: str
    class_: str = Field(alias="class")
    description: str


class SchedulerList(BaseModel):
    schedulers: list[SchedulerView]


def dump(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """Validate a response against its schema and return it as JSON-ready data."""
    return model.model_validate(data).model_dump(mode="json", by_alias=True, exclude_none=False)
