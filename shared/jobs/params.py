"""A job's parameters: the one typed object the API writes into the job record and the worker reads.

`resolve_request` (shared.jobs.schema) builds it from a validated request, with every default
filled in; the record stores `to_stored()` (JSON, tagged with `version`) and the worker rebuilds
it with `from_stored`. Fields only some model families read live in a sub-object of that family
(`family_fields`), so adding a family, or a field to one, touches no other.

Version 1 records (written before the version tag) are one flat dict, family fields at the top
level; `from_stored` still reads them. Clients see the flat layout either way (`public_view`).
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

VERSION = 2

OutputFormat = Literal["png", "jpeg", "webp"]


class Task(str, enum.Enum):
    """What a job asks the model to do (the request's `task`)."""

    TEXT_TO_IMAGE = "text-to-image"
    IMAGE_TO_IMAGE = "image-to-image"
    INPAINT = "inpaint"
    UNCONDITIONAL = "unconditional"

    @property
    def takes_image(self) -> bool:
        """Image-to-image and inpaint start from an input image (and read `strength`)."""
        return self in (Task.IMAGE_TO_IMAGE, Task.INPAINT)


class LoraChoice(BaseModel):
    """One LoRA adapter a job applies: a name from GET /v1/loras and its weight."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(min_length=1, max_length=64)
    scale: float = Field(default=1.0, ge=-4, le=4)


class FluxFields(BaseModel):
    """What only FLUX reads: true classifier-free guidance and the T5 prompt length."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Literal["flux"] = "flux"
    true_cfg_scale: float
    max_sequence_length: int


class SD3Fields(BaseModel):
    """What only SD 3 reads: the T5 prompt length."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    family: Literal["sd3"] = "sd3"
    max_sequence_length: int


FamilyFields = Annotated[FluxFields | SD3Fields, Field(discriminator="family")]

# Family → the type of its own fields. The field names are the pipeline's argument names.
FAMILY_FIELD_TYPES: dict[str, type[BaseModel]] = {"flux": FluxFields, "sd3": SD3Fields}

# Optional parts left out of the stored record while unset (as version 1 did).
_OMITTED_WHEN_EMPTY = ("preview_every", "webhook_url", "loras", "image_key", "mask_key", "family_fields")


class JobParams(BaseModel):
    """Exactly what the worker runs: the model, the task, and every setting with its default filled
    in (the seed included). `width`/`height` are None only while an image job waits for its input
    image's size; `image_key`/`mask_key` name the stored input images."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[2] = VERSION
    model: str
    task: Task
    prompt: str | None = None
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    steps: int
    guidance_scale: float | None = None
    scheduler: str
    seed: int
    num_images: int = 1
    strength: float | None = None
    output_format: OutputFormat = "png"
    preview_every: int | None = None
    webhook_url: str | None = None
    loras: tuple[LoraChoice, ...] = ()
    family_fields: FamilyFields | None = None
    image_key: str | None = None
    mask_key: str | None = None

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> "JobParams":
        """The params of a job record, of this version or version 1 (flat, untagged)."""
        if "version" in stored:
            return cls.model_validate(stored)
        return cls.model_validate(_upgrade_v1(stored))

    def to_stored(self) -> dict[str, Any]:
        """The JSON the job record holds."""
        data = self.model_dump(mode="json")
        return {k: v for k, v in data.items() if not (k in _OMITTED_WHEN_EMPTY and v in (None, [], ()))}

    def request_fields(self) -> dict[str, Any]:
        """These params as a `POST /v1/jobs` body: the same job again (the dashboard's retry)."""
        return request_body(self.to_stored())

    def family_kwargs(self) -> dict[str, Any]:
        """The family's own pipeline arguments (FLUX's `true_cfg_scale`, ...); none for other families."""
        if self.family_fields is None:
            return {}
        return self.family_fields.model_dump(exclude={"family"}, exclude_none=True)

    def adapters(self) -> dict[str, float]:
        """The job's LoRA adapters and their weights, {name: scale}."""
        return {choice.name: choice.scale for choice in self.loras}

    def sized(self, width: int, height: int) -> "JobParams":
        return self.model_copy(update={"width": width, "height": height})


def public_view(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored params dict (any version) in the flat layout clients see; nothing is validated, so
    a malformed old record still shows."""
    view = {k: v for k, v in stored.items() if k not in ("version", "family_fields")}
    own = stored.get("family_fields") or {}
    return view | {k: v for k, v in own.items() if k != "family"}


def request_body(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored params dict (any version) as the `POST /v1/jobs` body that makes the same job (the
    dashboard's curl line); like `public_view`, it validates nothing."""
    return {k: v for k, v in public_view(stored).items() if v is not None and not k.endswith("_key")}


def _upgrade_v1(flat: dict[str, Any]) -> dict[str, Any]:
    """A version 1 dict in this version's layout: its family fields gathered into their sub-object
    (the family is the one whose fields are exactly those present: v1 stored all of them)."""
    names = {name for fields in FAMILY_FIELD_TYPES.values() for name in fields.model_fields} - {"family"}
    present = {k: flat[k] for k in names if flat.get(k) is not None}
    rest = {k: v for k, v in flat.items() if k not in names}
    if not present:
        return rest
    for family, fields in FAMILY_FIELD_TYPES.items():
        if set(fields.model_fields) - {"family"} == set(present):
            return rest | {"family_fields": {"family": family, **present}}
    return rest | {"family_fields": present}  # no family matches: validation says which field is wrong
