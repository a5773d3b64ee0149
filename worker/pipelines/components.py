"""One registry from the class names in `model_index.json` to the classes Kiln loads.

Diffusers writes each component as `[library, ClassName]`. Models and schedulers (library
`diffusers`) map to Kiln's own classes of the same name (schedulers through
`worker.schedulers.SCHEDULER_CLASSES`); text encoders, tokenizers and image
processors (library `transformers`) load with transformers' own `from_pretrained`. Components
Kiln deliberately does not ship (the Stable Diffusion safety checker) load as None.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

logger = logging.getLogger(__name__)

MODEL_CLASSES = ("UNet2DModel", "UNet2DConditionModel", "AutoencoderKL", "FluxTransformer2DModel", "SD3Transformer2DModel")
TRANSFORMERS_MODELS = (
    "CLIPTextModel",
    "CLIPTextModelWithProjection",
    "CLIPVisionModelWithProjection",
    "T5EncoderModel",
)
TRANSFORMERS_PROCESSORS = (
    "CLIPTokenizer",
    "CLIPTokenizerFast",
    "CLIPImageProcessor",
    "CLIPFeatureExtractor",
    "T5TokenizerFast",
    "T5Tokenizer",
)
# Components Kiln does not ship; they load as None with a log line.
SKIPPED_CLASSES = ("StableDiffusionSafetyChecker",)


class UnsupportedComponentError(ValueError):
    """`model_index.json` names a component class Kiln cannot load."""


@dataclass(frozen=True)
class ComponentKind:
    """How to load one class: its loader and whether the folder must hold weights."""

    cls: type
    load: Callable[[type, Path, torch.dtype | None, str | None], Any]
    has_weights: bool


def _load_kiln_model(cls: type, folder: Path, dtype: torch.dtype | None, variant: str | None) -> Any:
    return cls.from_pretrained(folder, torch_dtype=dtype, variant=variant)


def _load_scheduler(cls: type, folder: Path, dtype: torch.dtype | None, variant: str | None) -> Any:
    return cls.from_pretrained(folder)


@functools.cache
def _transformers_dtype_keyword() -> str:
    """`dtype` since transformers 4.56 (`torch_dtype` before, and deprecated after)."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def _load_transformers_model(cls: type, folder: Path, dtype: torch.dtype | None, variant: str | None) -> Any:
    # transformers 5 defaults to the checkpoint's dtype; Diffusers semantics is fp32 unless asked.
    options = {_transformers_dtype_keyword(): dtype or torch.float32}
    return cls.from_pretrained(folder, variant=variant, **options)


def _load_processor(cls: type, folder: Path, dtype: torch.dtype | None, variant: str | None) -> Any:
    return cls.from_pretrained(folder)


# transformers' lazy module is not safe to resolve from several threads at once (a class can read
# as missing while another thread is importing it); the first build runs under this lock.
_REGISTRY_LOCK = threading.Lock()


def component_registry() -> dict[str, ComponentKind]:
    """Class name -> how to load it; built once, on first use, from what Kiln and transformers export."""
    with _REGISTRY_LOCK:
        return _build_registry()


@functools.cache
def _build_registry() -> dict[str, ComponentKind]:
    import transformers

    from worker import models, schedulers

    sources = (
        (models, MODEL_CLASSES, _load_kiln_model, True),
        (schedulers, tuple(schedulers.SCHEDULER_CLASSES), _load_scheduler, False),
        (transformers, TRANSFORMERS_MODELS, _load_transformers_model, True),
        (transformers, TRANSFORMERS_PROCESSORS, _load_processor, False),
    )
    registry: dict[str, ComponentKind] = {}
    for module, names, loader, has_weights in sources:
        for name in names:
            cls = getattr(module, name, None)
            if cls is not None:
                registry[name] = ComponentKind(cls, loader, has_weights)
    return registry


def lookup(name: str, library: str | None = None) -> ComponentKind | None:
    """The registry entry for `name`; None for a class Kiln deliberately skips.

    Raises:
        UnsupportedComponentError: the class is neither supported nor skipped.
    """
    if name in SKIPPED_CLASSES:
        return None
    registry = component_registry()
    if name not in registry:
        raise UnsupportedComponentError(
            f"component class {library or '?'}.{name} is not supported by Kiln; "
            f"supported classes: {sorted(registry)}"
        )
    return registry[name]


def library_of(component: Any) -> str:
    """The `model_index.json` library name for a loaded component."""
    module = type(component).__module__
    return "transformers" if module.startswith("transformers") else "diffusers"


def save_component(component: Any, folder: Path, variant: str | None = None) -> None:
    """Write one component in the layout its loader (and Diffusers) reads.

    Models (Kiln's and transformers') take the weight variant; tokenizers, processors and
    schedulers have no weights.
    """
    if isinstance(component, torch.nn.Module):
        component.save_pretrained(folder, variant=variant)
    elif hasattr(component, "save_pretrained"):
        component.save_pretrained(folder)
    else:
        component.save_config(folder)
