"""Interchangeable noise schedulers, Diffusers-compatible in names, configs and results."""

from .base import SchedulerMixin, SchedulerOutput, randn_tensor
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from .heun import HeunDiscreteScheduler
from .kdpm2 import KDPM2DiscreteScheduler
from .lms import LMSDiscreteScheduler
from .registry import SCHEDULER_CLASSES, build_scheduler, scheduler_class

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "EulerAncestralDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "LMSDiscreteScheduler",
    "SCHEDULER_CLASSES",
    "SchedulerMixin",
    "SchedulerOutput",
    "build_scheduler",
    "randn_tensor",
    "scheduler_class",
]
