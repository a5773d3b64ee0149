"""The model catalog: which models clients may ask for, where they load from, their defaults.

Read by the API (validation, `GET /v1/models`) and by workers (loading). A JSON file named by
`KILN_MODELS_FILE` replaces the built-in catalog, which serves the bundled model:

    {"models": [{"name": "sd15", "source": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                 "family": "sd", "default_width": 512, "default_height": 512, ...}],
     "loras": [{"name": "pixel-art", "source": "some/lora-repo", "weight_name": "pixel.safetensors",
                "base": "sd15"}]}

A LoRA's `base` is the model name or the family it was trained for; jobs ask for it by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.errors import NotFound
from shared.schedulers import DEFAULT_SCHEDULERS, DIFFUSION, FLOW, SCHEDULERS, scheduler_names
from shared.settings import REPO_ROOT, Settings

Task = Literal["text-to-image", "image-to-image", "inpaint", "unconditional"]
Family = Literal["ddpm", "sd", "sdxl", "flux", "sd3"]

# Which tasks each model family can serve; the worker maps (family, task) to a pipeline class.
FAMILY_TASKS: dict[str, tuple[Task, ...]] = {
    "ddpm": ("unconditional",),
    "sd": ("text-to-image", "image-to-image", "inpaint"),
    "sdxl": ("text-to-image",),
    "flux": ("text-to-image", "image-to-image", "inpaint"),
    "sd3": ("text-to-image", "image-to-image"),
}

# Request fields only some families read; a job for another family naming one is refused.
FAMILY_FIELDS: dict[str, frozenset[str]] = {
    "flux": frozenset({"true_cfg_scale", "max_sequence_length"}),
    "sd3": frozenset({"max_sequence_length"}),
}
FAMILY_ONLY_FIELDS = frozenset().union(*FAMILY_FIELDS.values())

# Families denoised by flow matching (a transformer predicting velocity): flow schedulers only.
FLOW_FAMILIES = frozenset({"flux", "sd3"})

# Defaults a model entry gets from its family when it does not set them.
FAMILY_DEFAULTS: dict[str, dict[str, object]] = {
    "flux": {"default_scheduler": DEFAULT_SCHEDULERS[FLOW], "default_guidance_scale": 3.5, "default_steps": 28,
             "default_max_sequence_length": 512, "default_width": 1024, "default_height": 1024},
    "sd3": {"default_scheduler": DEFAULT_SCHEDULERS[FLOW], "default_guidance_scale": 7.0, "default_steps": 28,
            "default_max_sequence_length": 256, "default_width": 1024, "default_height": 1024},
}

# Image sides must be multiples of this: the VAE's 8, times the patch size 2 of FLUX's packing and SD3.
SIZE_MULTIPLE: dict[str, int] = {"flux": 16, "sd3": 16}

MAX_SEQUENCE_LENGTH = 512  # T5's position limit in FLUX and SD3
# Without a declared per-job budget a model accepts jobs up to this many times its default job
# (default size × default steps × 1 image): a 64×64 model does not take a 1024×1024 job.
DEFAULT_COST_FACTOR = 64

BUNDLED_MODEL = "kiln-ddpm-tiny"


def _family_defaults(data: object) -> object:
    """Fill what the model entry leaves out from its family's defaults (before validation)."""
    if not isinstance(data, dict):
        return data
    return {**FAMILY_DEFAULTS.get(data.get("family"), {}), **data}


class ModelSpec(BaseModel):
    """One servable model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    source: str = Field(description="local folder or Hub repo id in the Diffusers layout")
    family: Family
    description: str = ""
    revision: str | None = None
    variant: str | None = None
    queue: str = "default"
    default_width: int = Field(default=512, ge=8)
    default_height: int = Field(default=512, ge=8)
    fixed_size: bool = Field(default=False, description="the model makes one size only (DDPM)")
    default_steps: int = Field(default=25, ge=1)
    default_scheduler: str = "dpmpp_2m"
    default_guidance_scale: float = Field(default=7.5, ge=0)
    vocabulary: list[str] | None = None
    guidance_distilled: bool = Field(
        default=False, description="FLUX [dev]: guidance_scale is embedded guidance, one pass per step")
    default_true_cfg_scale: float = Field(default=1.0, ge=1)
    default_max_sequence_length: int | None = Field(default=None, ge=1, le=MAX_SEQUENCE_LENGTH)
    max_width: int | None = Field(default=None, ge=8, description="default: twice the default width")
    max_height: int | None = Field(default=None, ge=8, description="default: twice the default height")
    max_pixels: int | None = Field(default=None, ge=64, description="width × height; default max_width × max_height")
    max_cost: int | None = Field(
        default=None, ge=1, description="per-job budget of width × height × steps × num_images; default "
                                        f"{DEFAULT_COST_FACTOR} × the default job's")

    _fill_family_defaults = model_validator(mode="before")(_family_defaults)

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        if self.default_scheduler not in SCHEDULERS:
            raise ValueError(
                f"default_scheduler {self.default_scheduler!r} is unknown; allowed: {sorted(SCHEDULERS)}"
            )
        if self.default_scheduler not in self.allowed_schedulers():
            raise ValueError(f"default_scheduler {self.default_scheduler!r} does not suit {self.family} models; "
                             f"allowed: {self.allowed_schedulers()}")
        if "max_sequence_length" in self.fields and self.default_max_sequence_length is None:
            raise ValueError(f"{self.family} models need default_max_sequence_length")
        return self

    @property
    def tasks(self) -> tuple[Task, ...]:
        return FAMILY_TASKS[self.family]

    @property
    def fields(self) -> frozenset[str]:
        """The family-only request fields this model reads."""
        return FAMILY_FIELDS.get(self.family, frozenset())

    @property
    def size_multiple(self) -> int:
        return SIZE_MULTIPLE.get(self.family, 8)

    @property
    def flow(self) -> bool:
        return self.family in FLOW_FAMILIES

    def allowed_schedulers(self) -> list[str]:
        """The scheduler names of this model's kind: flow-matching for FLUX/SD3, else diffusion."""
        return scheduler_names(FLOW if self.flow else DIFFUSION)

    @property
    def celery_queue(self) -> str:
        return f"kiln.{self.queue}"

    @property
    def limits(self) -> dict[str, int]:
        """What one job may ask of this model: sides, pixels and pixel-steps (w × h × steps × images)."""
        width = self.max_width or (self.default_width if self.fixed_size else min(2 * self.default_width, 2048))
        height = self.max_height or (self.default_height if self.fixed_size else min(2 * self.default_height, 2048))
        default_cost = self.default_width * self.default_height * self.default_steps
        return {"max_width": width, "max_height": height, "max_pixels": self.max_pixels or width * height,
                "max_cost": self.max_cost or DEFAULT_COST_FACTOR * default_cost}

    def defaults(self) -> dict[str, object]:
        values: dict[str, object] = {
            "width": self.default_width, "height": self.default_height, "steps": self.default_steps,
            "scheduler": self.default_scheduler, "guidance_scale": self.default_guidance_scale,
        }
        if "true_cfg_scale" in self.fields:
            values["true_cfg_scale"] = self.default_true_cfg_scale
        if "max_sequence_length" in self.fields:
            values["max_sequence_length"] = self.default_max_sequence_length
        return values

    def public(self) -> dict:
        """What `GET /v1/models` shows: no filesystem paths."""
        return {
            "name": self.name,
            "family": self.family,
            "description": self.description,
            "tasks": list(self.tasks),
            "defaults": self.defaults(),
            "limits": self.limits,
            "fields": sorted(self.fields),
            "size_multiple": self.size_multiple,
            "schedulers": self.allowed_schedulers(),
            "guidance_distilled": self.guidance_distilled,
            "fixed_size": self.fixed_size,
            "vocabulary": self.vocabulary,
        }


class LoraSpec(BaseModel):
    """One servable LoRA adapter (Diffusers/PEFT or kohya file)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
    source: str = Field(description="local file or folder, or Hub repo id")
    weight_name: str | None = Field(default=None, description="the file inside a folder or repo")
    base: str = Field(description="the model name, or the family, the adapter was trained for")
    revision: str | None = None
    description: str = ""

    def fits(self, model: ModelSpec) -> bool:
        return self.base in (model.name, model.family)

    def public(self) -> dict:
        """What `GET /v1/loras` shows: no filesystem paths."""
        return {"name": self.name, "base": self.base, "description": self.description}


class Catalog:
    """The models (and LoRA adapters) on offer, by name."""

    def __init__(self, specs: list[ModelSpec], loras: list[LoraSpec] | None = None) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self._loras = {lora.name: lora for lora in loras or ()}
        families = {spec.family for spec in specs}
        for lora in self._loras.values():
            if lora.base not in self._specs and lora.base not in families:
                raise ValueError(f"LoRA {lora.name!r}: base {lora.base!r} is neither a model ({self.names()}) "
                                 f"nor a family of one ({sorted(families)})")

    @property
    def loras(self) -> list[LoraSpec]:
        return list(self._loras.values())

    def get_lora(self, name: str) -> LoraSpec:
        try:
            return self._loras[name]
        except KeyError:
            raise NotFound(f"unknown LoRA {name!r}; available: {sorted(self._loras)}", field="loras") from None

    def __iter__(self):
        return iter(self._specs.values())

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def names(self) -> list[str]:
        return sorted(self._specs)

    def default_name(self) -> str:
        """The model a request without `model` gets: the catalog's first entry."""
        return next(iter(self._specs))

    def get(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise NotFound(f"unknown model {name!r}; available: {self.names()}", field="model") from None


SHAPES_MODEL = "kiln-shapes"
SHAPES_FLUX_MODEL = "kiln-shapes-flux"
SHAPES_PINK_LORA = "kiln-shapes-pink"
SHAPES_VOCABULARY = [
    "a", "at", "background", "black", "blue", "bottom", "centre", "circle", "gray", "green", "in", "large",
    "left", "on", "orange", "purple", "red", "right", "small", "square", "the", "top", "triangle", "white",
    "yellow",
]
SHAPES_PROMPTS = ("Prompts like 'a small red circle at the top left on a white background'; the vocabulary "
                  "lists the words it knows.")

# Plain FLUX.1 [schnell]-style (no embedded guidance, no CFG): one transformer pass per step. The T5
# length is the one it was trained with — FLUX has no text attention mask, so padding counts.
FLUX_SHAPES_DEFAULTS = dict(default_width=64, default_height=64, default_steps=8, default_scheduler="flow_euler",
                            default_guidance_scale=0.0, default_max_sequence_length=32)


def _bundled(name: str, marker: str = "model_index.json") -> Path | None:
    """`models/<name>` of the checkout when it holds `marker`, else None (a trimmed checkout)."""
    folder = REPO_ROOT / "models" / name
    return folder if (folder / marker).is_file() else None


def bundled_specs(settings: Settings) -> list[ModelSpec]:
    """The models Kiln ships. First (the default) the small text-to-image model trained by
    `kiln_shapes` (docs/kiln-shapes.md), then its FLUX-architecture sibling, each when its folder
    is in the checkout; then the tiny random DDPM written at start, which proves the unconditional
    path."""
    specs = []
    if shapes := _bundled(SHAPES_MODEL):
        specs.append(ModelSpec(
            name=SHAPES_MODEL, source=str(shapes), family="sd",
            description="Small Stable-Diffusion-architecture model of coloured shapes on plain backgrounds, trained "
                        "by kiln_shapes (docs/kiln-shapes.md). " + SHAPES_PROMPTS,
            default_width=64, default_height=64, default_steps=20, default_scheduler="dpmpp_2m",
            default_guidance_scale=4.0, vocabulary=SHAPES_VOCABULARY,
        ))
    if flux := _bundled(SHAPES_FLUX_MODEL):
        specs.append(ModelSpec(
            name=SHAPES_FLUX_MODEL, source=str(flux), family="flux",
            description="Small FLUX.1-architecture rectified-flow transformer of the same shapes world (it also "
                        "gets positions right), trained by kiln_shapes (docs/kiln-shapes.md). " + SHAPES_PROMPTS,
            **FLUX_SHAPES_DEFAULTS, vocabulary=SHAPES_VOCABULARY,
        ))
    specs.append(ModelSpec(
        name=BUNDLED_MODEL,
        source=str(settings.models_dir / BUNDLED_MODEL),
        family="ddpm",
        description="Tiny unconditional DDPM with random weights (it draws noise), written by python -m worker.bundled",
        default_width=32,
        default_height=32,
        fixed_size=True,
        default_steps=20,
        default_scheduler="ddim",
        default_guidance_scale=0.0,
    ))
    return specs


def bundled_loras() -> list[LoraSpec]:
    """The adapters Kiln ships: `kiln-shapes-pink` (the colour word pink for kiln-shapes)."""
    if not (pink := _bundled(SHAPES_PINK_LORA, "pytorch_lora_weights.safetensors")):
        return []
    return [LoraSpec(name=SHAPES_PINK_LORA, source=str(pink), weight_name="pytorch_lora_weights.safetensors",
                     base=SHAPES_MODEL,
                     description="Teaches kiln-shapes the colour word 'pink', sRGB (240, 120, 190), e.g. 'a large "
                                 "pink circle in the centre on a white background' (docs/kiln-shapes.md).")]


def load_catalog(settings: Settings) -> Catalog:
    """The catalog from `KILN_MODELS_FILE`, or the bundled one."""
    if settings.models_file is None:
        specs = bundled_specs(settings)
        return Catalog(specs, [lora for lora in bundled_loras() if any(lora.fits(spec) for spec in specs)])
    path = Path(settings.models_file)
    try:
        data = json.loads(path.read_text())
        specs = [ModelSpec(**entry) for entry in data["models"]]
        loras = [LoraSpec(**entry) for entry in data.get("loras", [])]
        return Catalog(specs, loras)
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValidationError, ValueError) as exc:
        raise ValueError(f"KILN_MODELS_FILE {path}: {exc}") from exc
