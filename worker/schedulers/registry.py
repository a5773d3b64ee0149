"""Scheduler class names → classes, and user-facing short names → configured schedulers.

Short names and their config overrides are plain data in `shared.schedulers` (the API lists
and validates them without torch); this module resolves them to classes for the worker.
"""

from __future__ import annotations

from typing import Any, Mapping

from shared.schedulers import SCHEDULERS

from .base import SchedulerMixin
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpmsolver_multistep import DPMSolverMultistepScheduler
from .dpmsolver_singlestep import DPMSolverSinglestepScheduler
from .euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from .flow_match import FlowMatchEulerDiscreteScheduler
from .heun import HeunDiscreteScheduler
from .kdpm2 import KDPM2DiscreteScheduler
from .lcm import LCMScheduler
from .lms import LMSDiscreteScheduler
from .pndm import PNDMScheduler
from .unipc import UniPCMultistepScheduler

SCHEDULER_CLASSES: dict[str, type[SchedulerMixin]] = {
    "DDPMScheduler": DDPMScheduler,
    "DDIMScheduler": DDIMScheduler,
    "PNDMScheduler": PNDMScheduler,
    "LMSDiscreteScheduler": LMSDiscreteScheduler,
    "EulerDiscreteScheduler": EulerDiscreteScheduler,
    "EulerAncestralDiscreteScheduler": EulerAncestralDiscreteScheduler,
    "HeunDiscreteScheduler": HeunDiscreteScheduler,
    "KDPM2DiscreteScheduler": KDPM2DiscreteScheduler,
    "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler,
    "DPMSolverSinglestepScheduler": DPMSolverSinglestepScheduler,
    "UniPCMultistepScheduler": UniPCMultistepScheduler,
    "LCMScheduler": LCMScheduler,
    "FlowMatchEulerDiscreteScheduler": FlowMatchEulerDiscreteScheduler,
}


def scheduler_class(class_name: str) -> type[SchedulerMixin]:
    """The Kiln class for a Diffusers scheduler class name (as in `model_index.json`)."""
    try:
        return SCHEDULER_CLASSES[class_name]
    except KeyError:
        known = ", ".join(sorted(SCHEDULER_CLASSES))
        raise ValueError(f"unknown scheduler class {class_name!r}; known: {known}") from None


def build_scheduler(short_name: str, base_config: Mapping[str, Any] | SchedulerMixin) -> SchedulerMixin:
    """A fresh scheduler for one job: `short_name`'s class, from the model's scheduler config.

    Args:
        short_name: a key of `shared.schedulers.SCHEDULERS` (e.g. `dpmpp_2m_karras`).
        base_config: the model's scheduler config (dict, `config` of a scheduler, or a scheduler).
            Keys it took as defaults are dropped (the swap rule), then the short name's
            overrides are applied.
    """
    if short_name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {short_name!r}; known: {', '.join(SCHEDULERS)}")
    choice = SCHEDULERS[short_name]
    cls = scheduler_class(choice.class_name)
    source = base_config if isinstance(base_config, SchedulerMixin) else dict(base_config)
    if isinstance(source, SchedulerMixin) and type(source) is cls and not choice.overrides:
        return source.clone()
    return cls.from_config(source, **dict(choice.overrides))
