"""The job request, validated at the API edge and resolved into the job's `JobParams`.

Validation happens in two passes: `JobRequest` checks types, unknown fields and static bounds;
`resolve_request` checks what depends on the model and the settings and fills in defaults, so
the stored parameters (`shared.jobs.params`) say exactly what the worker will run (the seed included).
"""

from __future__ import annotations

import secrets
import unicodedata
from typing import Any

from annotated_types import Ge, Gt, Le, MaxLen
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.catalog import FAMILY_ONLY_FIELDS, MAX_SEQUENCE_LENGTH, Catalog, ModelSpec, Task
from shared.errors import ValidationFailed
from shared.jobs.params import FAMILY_FIELD_TYPES, JobParams, LoraChoice, OutputFormat
from shared.schedulers import SCHEDULERS
from shared.settings import Settings

MAX_SIDE = 2048
MAX_SEED = 2**63 - 1
URL_PATTERN = r"^https?://[^\s]+$"


class FlowFields(BaseModel):
    """Fields only the flow-matching transformer families read (`FAMILY_FIELDS` in the catalog
    says which family reads which); a job for another family naming one is refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    true_cfg_scale: float | None = Field(
        default=None, ge=1, le=30, description="FLUX only: classifier-free guidance with negative_prompt (two "
                                               "passes per step) when > 1; default from GET /v1/models")
    max_sequence_length: int | None = Field(
        default=None, ge=1, le=MAX_SEQUENCE_LENGTH, description="FLUX and SD3 only: T5 prompt tokens; default "
                                                                "from GET /v1/models")


MAX_LORAS = 8  # adapters one job may combine
TEXT_FIELDS = ("prompt", "negative_prompt")


class JobRequest(FlowFields):
    """The body of `POST /v1/jobs`. Every field but the prompt has a default. For FLUX models
    that are guidance-distilled, `guidance_scale` is the embedded guidance; for SD3 it is CFG."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    model: str | None = Field(default=None, max_length=64, description="a name from GET /v1/models")
    task: Task | None = None
    prompt: str | None = Field(default=None, min_length=1, max_length=2000)
    negative_prompt: str | None = Field(default=None, max_length=2000)
    width: int | None = Field(default=None, ge=8, le=MAX_SIDE, description="multiple of 8 (16 for FLUX and SD3)")
    height: int | None = Field(default=None, ge=8, le=MAX_SIDE, description="multiple of 8 (16 for FLUX and SD3)")
    steps: int | None = Field(default=None, ge=1, le=1000)
    guidance_scale: float | None = Field(default=None, ge=0, le=30)
    scheduler: str | None = Field(default=None, description="a name from GET /v1/schedulers")
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    num_images: int = Field(default=1, ge=1, le=64)
    strength: float | None = Field(default=None, gt=0, le=1)
    image: str | None = Field(default=None, max_length=16 * 1024 * 1024,
                              description="base64 (or data: URL) PNG/JPEG/WebP; or upload it, or give image_url")
    mask_image: str | None = Field(default=None, max_length=16 * 1024 * 1024,
                                   description="base64 PNG; white = repaint; or upload it, or give mask_image_url")
    image_url: str | None = Field(default=None, max_length=2048, pattern=URL_PATTERN,
                                  description="http(s) URL the API fetches the input image from")
    mask_image_url: str | None = Field(default=None, max_length=2048, pattern=URL_PATTERN)
    output_format: OutputFormat = "png"
    preview_every: int | None = Field(default=None, ge=1, le=1000,
                                      description="store a low-cost preview image every N steps while running")
    webhook_url: str | None = Field(default=None, max_length=2048, pattern=URL_PATTERN,
                                    description="POSTed a signed event when the job ends")
    loras: list[LoraChoice] | None = Field(default=None, max_length=MAX_LORAS,
                                           description="LoRA adapters from GET /v1/loras, each with a scale")


def parse_request(body: Any) -> JobRequest:
    """Check types, unknown fields and static bounds; raise `ValidationFailed` naming the field."""
    if not isinstance(body, dict):
        raise ValidationFailed("the request body must be a JSON object", field="body")
    try:
        req = JobRequest(**body)
    except ValidationError as exc:
        raise _to_validation_failed(exc) from None
    for name in TEXT_FIELDS:
        _check_no_control_characters(name, getattr(req, name))
    return req


def _check_no_control_characters(field: str, text: str | None) -> None:
    """Refuse C0/C1 control characters (NUL, ESC, DEL, …) other than tab and line breaks: no
    tokenizer wants them, and they would reach logs, terminals and the dashboard as they are."""
    bad = next((c for c in text or "" if unicodedata.category(c) == "Cc" and c not in "\t\n\r"), None)
    if bad is not None:
        raise ValidationFailed(f"{field} must not contain control characters (found {bad!r} at "
                               f"position {text.index(bad)})", field=field)


def _to_validation_failed(exc: ValidationError) -> ValidationFailed:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "body"
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = ", ".join(JobRequest.model_fields)
        return ValidationFailed(f"unknown field {field!r}; allowed fields: {allowed}", field=field)
    if kind == "string_too_short":  # the bound that was broken, not the other one
        least = err.get("ctx", {}).get("min_length", 1)
        told = "must not be empty" if least == 1 else f"must be at least {least} characters"
        return ValidationFailed(f"{field} {told}", field=field)
    bounds = _bounds(field)
    if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal",
                "string_too_short", "string_too_long"} and bounds:
        return ValidationFailed(f"{field} must be {bounds} (got {err['input']!r})", field=field)
    expected = _expected_type(field)
    message = f"{field}: {err['msg'][:1].lower()}{err['msg'][1:]}"
    if expected:
        message += f"; expected {expected}" + (f", {bounds}" if bounds else "")
    return ValidationFailed(message, field=field)


def _bounds(field: str) -> str:
    info = JobRequest.model_fields.get(field)
    if info is None:
        return ""
    parts = []
    for item in info.metadata:
        if isinstance(item, Ge):
            parts.append(f">= {item.ge}")
        elif isinstance(item, Gt):
            parts.append(f"> {item.gt}")
        elif isinstance(item, Le):
            parts.append(f"<= {item.le}")
        elif isinstance(item, MaxLen):
            parts.append(f"at most {item.max_length} characters")
    return " and ".join(parts)


def _expected_type(field: str) -> str:
    info = JobRequest.model_fields.get(field)
    if info is None:
        return ""
    text = str(info.annotation).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text.replace(" | None", "").replace("Optional[", "").rstrip("]") if text else ""


def resolve_request(req: JobRequest, catalog: Catalog, settings: Settings,
                    uploads: frozenset[str] = frozenset()) -> JobParams:
    """Apply the model's defaults and the checks that depend on it; return the job's params.

    Input images are not part of the params: the API stores them and adds their storage keys.
    `uploads` names the images that came as multipart files rather than JSON fields. An
    image-to-image or inpaint job without a width and height takes its size from the input
    image: its params hold `None` there until `size_from_input` fills them in.
    """
    model_name = req.model or catalog.default_name()
    if model_name not in catalog:
        raise ValidationFailed(f"unknown model {model_name!r}; available: {catalog.names()}", field="model")
    spec = catalog.get(model_name)
    task = req.task or spec.tasks[0]
    if task not in spec.tasks:
        raise ValidationFailed(f"model {spec.name!r} does not do {task!r}; it does {list(spec.tasks)}", field="task")
    _check_inputs(req, task, uploads)
    _check_family_fields(req, spec)
    steps = req.steps if req.steps is not None else spec.default_steps
    if steps > settings.max_steps:
        raise ValidationFailed(f"steps must be >= 1 and <= {settings.max_steps} (got {steps})", field="steps")
    if req.num_images > settings.max_num_images:
        raise ValidationFailed(
            f"num_images must be >= 1 and <= {settings.max_num_images} (got {req.num_images})", field="num_images"
        )
    params = JobParams(
        model=spec.name, task=task, prompt=req.prompt, negative_prompt=req.negative_prompt,
        width=req.width, height=req.height, steps=steps,
        guidance_scale=req.guidance_scale if req.guidance_scale is not None else spec.default_guidance_scale,
        scheduler=_scheduler(req, spec), seed=req.seed if req.seed is not None else secrets.randbelow(2**32),
        num_images=req.num_images, strength=_strength(req, task), output_format=req.output_format,
        preview_every=req.preview_every or None, webhook_url=req.webhook_url or None,
        loras=_loras(req, spec, catalog), family_fields=_family_fields(req, spec),
    )
    if task not in IMAGE_TASKS or (req.width is not None and req.height is not None):
        params = params.sized(*_resolve_size(req, spec.default_width, spec.default_height, spec.fixed_size,
                                             settings, spec.size_multiple))
        check_job_size(spec, params, settings)
    return params


IMAGE_TASKS = ("image-to-image", "inpaint")


def _check_family_fields(req: JobRequest, spec: ModelSpec) -> None:
    for name in sorted(FAMILY_ONLY_FIELDS - spec.fields):
        if getattr(req, name) is not None:
            raise ValidationFailed(f"{name} is not used by {spec.family} models like {spec.name!r}; leave it out",
                                   field=name)
    if spec.family == "flux" and not spec.guidance_distilled and req.guidance_scale is not None:
        raise ValidationFailed(f"guidance_scale does nothing for {spec.name!r} (not guidance-distilled); "
                               "use true_cfg_scale with a negative_prompt", field="guidance_scale")


def _loras(req: JobRequest, spec: ModelSpec, catalog: Catalog) -> tuple[LoraChoice, ...]:
    """The job's adapters: each in the catalog, made for this model, named once."""
    known = {lora.name: lora for lora in catalog.loras}
    seen: set[str] = set()
    for i, choice in enumerate(req.loras or ()):
        field = f"loras.{i}.name"
        if choice.name not in known:
            raise ValidationFailed(f"unknown LoRA {choice.name!r}; available: {sorted(known)}", field=field)
        if not known[choice.name].fits(spec):
            raise ValidationFailed(f"LoRA {choice.name!r} is for {known[choice.name].base!r}, not {spec.name!r} "
                                   f"({spec.family})", field=field)
        if choice.name in seen:
            raise ValidationFailed(f"LoRA {choice.name!r} is named twice", field=field)
        seen.add(choice.name)
    return tuple(req.loras or ())


def _family_fields(req: JobRequest, spec: ModelSpec) -> Any:
    """The family-only fields this model reads, with the model's defaults filled in (None for a
    family without any)."""
    kind = FAMILY_FIELD_TYPES.get(spec.family)
    if kind is None:
        return None
    defaults = spec.defaults()
    return kind(**{name: getattr(req, name) if getattr(req, name) is not None else defaults[name]
                   for name in sorted(spec.fields)})


def _scheduler(req: JobRequest, spec: ModelSpec) -> str:
    scheduler = req.scheduler or spec.default_scheduler
    if scheduler not in SCHEDULERS:
        raise ValidationFailed(f"unknown scheduler {scheduler!r}; allowed: {sorted(SCHEDULERS)}", field="scheduler")
    allowed = spec.allowed_schedulers()
    if scheduler not in allowed:
        kind = "flow-matching" if spec.flow else "noise-prediction"
        raise ValidationFailed(f"scheduler {scheduler!r} does not suit {spec.name!r} ({kind}); allowed: {allowed}",
                               field="scheduler")
    return scheduler


def check_job_size(spec: ModelSpec, params: JobParams, settings: Settings) -> None:
    """Refuse a job bigger than the model declares it makes: sides, pixels, and the per-job
    compute budget width × height × steps × num_images (a step's cost grows with pixels)."""
    limits, width, height = spec.limits, params.width, params.height
    for name, value in (("width", width), ("height", height)):
        if value > limits[f"max_{name}"]:
            raise ValidationFailed(f"{name} must be at most {limits[f'max_{name}']} for {spec.name!r} "
                                   f"(got {value})", field=name)
    if width * height > min(limits["max_pixels"], settings.max_pixels):
        most = min(limits["max_pixels"], settings.max_pixels)
        raise ValidationFailed(f"width × height must be at most {most} pixels for {spec.name!r} "
                               f"(got {width}×{height})", field="width")
    cost = width * height * params.steps * params.num_images
    if cost > limits["max_cost"]:
        raise ValidationFailed(
            f"width × height × steps × num_images = {cost} is over {spec.name!r}'s per-job budget max_cost = "
            f"{limits['max_cost']}; ask for fewer steps, images or pixels", field="steps")


def size_from_input(spec: ModelSpec, params: JobParams, image_size: tuple[int, int],
                    settings: Settings) -> JobParams:
    """An image job's size: what it asked for, else the input image's (a side that is missing
    keeps the input's aspect), rounded down to the model's size multiple; then checked like any job."""
    in_w, in_h = image_size
    width, height = params.width, params.height
    if width is None and height is None:
        width, height = in_w, in_h
    elif width is None:
        width = round(in_w * height / in_h)
    elif height is None:
        height = round(in_h * width / in_w)
    step = spec.size_multiple
    sized = params.sized(max(step, width - width % step), max(step, height - height % step))
    check_job_size(spec, sized, settings)
    return sized


def _strength(req: JobRequest, task: str) -> float | None:
    """How much of the input image is re-noised; only image-to-image and inpaint use it."""
    if task not in ("image-to-image", "inpaint"):
        return None
    return req.strength if req.strength is not None else 0.8


def given_inputs(req: JobRequest, uploads: frozenset[str] = frozenset()) -> dict[str, int]:
    """How many ways each input image was given (upload, base64, URL); more than one is an error."""
    return {name: (name in uploads) + (getattr(req, name) is not None) + (getattr(req, f"{name}_url") is not None)
            for name in ("image", "mask_image")}


def _check_inputs(req: JobRequest, task: str, uploads: frozenset[str] = frozenset()) -> None:
    needs_prompt = task != "unconditional"
    if needs_prompt and not req.prompt:
        raise ValidationFailed(f"prompt is required for {task}", field="prompt")
    if not needs_prompt:
        for name in ("prompt", "negative_prompt"):
            if getattr(req, name) is not None:
                raise ValidationFailed(f"{name} is not used by {task}; leave it out", field=name)
    given = given_inputs(req, uploads)
    for name, count in given.items():
        if count > 1:
            raise ValidationFailed(f"give {name} one way only: an upload, base64 or {name}_url", field=name)
    if task in ("image-to-image", "inpaint") and not given["image"]:
        raise ValidationFailed(f"image (or image_url, or an upload) is required for {task}", field="image")
    if task == "inpaint" and not given["mask_image"]:
        raise ValidationFailed("mask_image (or mask_image_url, or an upload) is required for inpaint",
                               field="mask_image")
    if task not in ("image-to-image", "inpaint"):
        if given["image"]:
            raise ValidationFailed("image is only used by image-to-image and inpaint", field="image")
        if req.strength is not None:
            raise ValidationFailed("strength is only used by image-to-image and inpaint", field="strength")
    if task != "inpaint" and given["mask_image"]:
        raise ValidationFailed("mask_image is only used by inpaint", field="mask_image")


def _resolve_size(
    req: JobRequest, default_w: int, default_h: int, fixed: bool, settings: Settings, multiple: int = 8
) -> tuple[int, int]:
    width = req.width if req.width is not None else default_w
    height = req.height if req.height is not None else default_h
    for name, value, default in (("width", width, default_w), ("height", height, default_h)):
        if value % multiple:
            raise ValidationFailed(f"{name} must be a multiple of {multiple} (got {value})", field=name)
        if fixed and value != default:
            raise ValidationFailed(f"{name} must be {default} for this model (it makes one size only)", field=name)
    if width * height > settings.max_pixels:
        raise ValidationFailed(
            f"width × height must be at most {settings.max_pixels} pixels (got {width}×{height})", field="width"
        )
    return width, height
