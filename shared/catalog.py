"""The model catalog: which models clients may ask for, where they load from, their defaults.

Read by the API (validation, `GET /v1/models`) and by workers (loading). A JSON file named by
`KILN_MODELS_FILE` replaces the built-in catalog, which serves the bundled model:

    {"models": [{"name": "sd15", "source": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                 "family": "sd", "default_width": 512, "default_height": 512, ...}]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shared.errors import NotFound
from shared.schedulers import SCHEDULERS
from shared.settings import REPO_ROOT, Settings

Task = Literal["text-to-image", "image-to-image", "inpaint", "unconditional"]

# Which tasks each model family can serve; the worker maps (family, task) to a pipeline class.
FAMILY_TASKS: dict[str, tuple[Task, ...]] = {
    "ddpm": ("unconditional",),
    "sd": ("text-to-image", "image-to-image", "inpaint"),
    "sdxl": ("text-to-image",),
}

BUNDLED_MODEL = "kiln-ddpm-tiny"


class ModelSpec(BaseModel):
    """One servable model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    source: str = Field(description="local folder or Hub repo id in the Diffusers layout")
    family: Literal["ddpm", "sd", "sdxl"]
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

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        if self.default_scheduler not in SCHEDULERS:
            raise ValueError(
                f"default_scheduler {self.default_scheduler!r} is unknown; allowed: {sorted(SCHEDULERS)}"
            )
        return self

    @property
    def tasks(self) -> tuple[Task, ...]:
        return FAMILY_TASKS[self.family]

    @property
    def celery_queue(self) -> str:
        return f"kiln.{self.queue}"

    def public(self) -> dict:
        """What `GET /v1/models` shows: no filesystem paths."""
        return {
            "name": self.name,
            "family": self.family,
            "description": self.description,
            "tasks": list(self.tasks),
            "defaults": {
                "width": self.default_width,
                "height": self.default_height,
                "steps": self.default_steps,
                "scheduler": self.default_scheduler,
                "guidance_scale": self.default_guidance_scale,
            },
            "fixed_size": self.fixed_size,
            "vocabulary": self.vocabulary,
        }


class Catalog:
    """The models on offer, by name."""

    def __init__(self, specs: list[ModelSpec]) -> None:
        self._specs = {spec.name: spec for spec in specs}

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
SHAPES_VOCABULARY = [
    "a", "at", "background", "black", "blue", "bottom", "centre", "circle", "gray", "green", "in", "large",
    "left", "on", "orange", "purple", "red", "right", "small", "square", "the", "top", "triangle", "white",
    "yellow",
]


def bundled_specs(settings: Settings) -> list[ModelSpec]:
    """The models Kiln ships. First (the default) the small text-to-image model trained by
    `kiln_shapes` (docs/kiln-shapes.md) when its folder is in the checkout; then the tiny random
    DDPM written at start, which proves the unconditional path."""
    specs = []
    shapes = REPO_ROOT / "models" / SHAPES_MODEL
    if (shapes / "model_index.json").is_file():
        specs.append(ModelSpec(
            name=SHAPES_MODEL, source=str(shapes), family="sd",
            description="Small Stable-Diffusion-architecture model of coloured shapes on plain backgrounds, trained "
                        "by kiln_shapes (docs/kiln-shapes.md). Prompts like 'a small red circle at the top left "
                        "on a white background'; the vocabulary lists the words it knows.",
            default_width=64, default_height=64, default_steps=20, default_scheduler="dpmpp_2m",
            default_guidance_scale=4.0, vocabulary=SHAPES_VOCABULARY,
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


def load_catalog(settings: Settings) -> Catalog:
    """The catalog from `KILN_MODELS_FILE`, or the bundled one."""
    if settings.models_file is None:
        return Catalog(bundled_specs(settings))
    path = Path(settings.models_file)
    try:
        data = json.loads(path.read_text())
        specs = [ModelSpec(**entry) for entry in data["models"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValidationError) as exc:
        raise ValueError(f"KILN_MODELS_FILE {path}: {exc}") from exc
    return Catalog(specs)
