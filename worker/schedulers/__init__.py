"""Interchangeable noise schedulers, Diffusers-compatible in names, configs and results."""

from .base import SchedulerMixin, SchedulerOutput, randn_tensor
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .registry import SCHEDULER_CLASSES, build_scheduler, scheduler_class

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "SCHEDULER_CLASSES",
    "SchedulerMixin",
    "SchedulerOutput",
    "build_scheduler",
    "randn_tensor",
    "scheduler_class",
]
