"""pytest plugin: diffusers' public names resolve to Kiln's classes of the same name.

Loaded with `-p bench.diffusers_suite.kiln_swap_pipelines` by `pipelines.py` for the swapped run. It
runs at plugin import, before any test module is collected, so `from diffusers import
StableDiffusionPipeline, UNet2DConditionModel, DDIMScheduler` in diffusers' test files binds Kiln's
pipeline, models and schedulers: a pipeline built from those components is Kiln end to end. Only
names Kiln provides are mapped; everything else (transformers' text encoders, diffusers' test
helpers, `AysSchedules`) stays as it is.
"""

from __future__ import annotations

import importlib
import inspect
import sys

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


def _defining_modules(name: str) -> list:
    """diffusers' own submodules that define `name` (e.g. `diffusers.models.unets.unet_2d_condition`)."""
    original = getattr(diffusers, name)
    home = sys.modules.get(getattr(original, "__module__", ""))
    return [home] if home is not None else []


def install() -> dict[str, type]:
    """Replace diffusers' classes by Kiln's in every namespace that exposes them; returns the mapping."""
    mapping = kiln_classes()
    for name, cls in mapping.items():
        targets = [importlib.import_module(m) for m in _NAMESPACES]
        targets += _defining_modules(name)
        for module in targets:
            if module is diffusers or hasattr(module, name):
                setattr(module, name, cls)
    return mapping


MAPPED = install()


def pytest_report_header(config):
    return f"kiln swap: {len(MAPPED)} diffusers names -> Kiln ({', '.join(sorted(MAPPED))})"
