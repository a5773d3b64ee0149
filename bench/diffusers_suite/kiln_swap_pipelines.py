"""pytest plugin: diffusers' public names resolve to Kiln's classes of the same name.

Loaded with `-p bench.diffusers_suite.kiln_swap_pipelines` by `pipelines.py` for the swapped run. It
runs at plugin import, before any test module is collected, so `from diffusers import
StableDiffusionPipeline, UNet2DConditionModel, DDIMScheduler` in diffusers' test files binds Kiln's
pipeline, models and schedulers: a pipeline built from those components is Kiln end to end. Only
names Kiln provides are mapped, and only in the public namespaces a user imports from — as a user
who changes the import would: diffusers' own modules keep their classes, so a diffusers pipeline Kiln
does not have (e.g. SDXL img2img) stays diffusers' and runs on the Kiln components it is given.
Everything else (transformers' text encoders, diffusers' test helpers, `AysSchedules`) stays as it is.
"""

from __future__ import annotations

import importlib
import inspect

import diffusers

import worker.models as kiln_models
import worker.pipelines as kiln_pipelines
import worker.schedulers as kiln_schedulers

# Modules under which diffusers exposes the same public names (lazy modules resolve on attribute read).
_NAMESPACES = ("diffusers", "diffusers.models", "diffusers.schedulers", "diffusers.pipelines")


def kiln_classes() -> dict[str, type]:
    """Every public class of Kiln's runtime whose name diffusers also exports."""
    found: dict[str, type] = {}
    for module in (kiln_models, kiln_schedulers, kiln_pipelines):
        for name in getattr(module, "__all__", ()):
            value = getattr(module, name)
            if inspect.isclass(value) and hasattr(diffusers, name):
                found[name] = value
    return found


def install() -> dict[str, type]:
    """Replace diffusers' classes by Kiln's in the public namespaces that expose them; returns the mapping."""
    mapping = kiln_classes()
    for name, cls in mapping.items():
        for module in map(importlib.import_module, _NAMESPACES):
            if module is diffusers or hasattr(module, name):
                setattr(module, name, cls)
    return mapping


MAPPED = install()


def pytest_report_header(config):
    return f"kiln swap: {len(MAPPED)} diffusers names -> Kiln ({', '.join(sorted(MAPPED))})"
