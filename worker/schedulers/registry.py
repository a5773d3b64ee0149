"""Scheduler class names (as `model_index.json` and `scheduler_config.json` spell them) → classes.

The serving worker's short names (`dpmpp_2m_karras`, ...) resolve to these classes in
`worker.job_scheduler`; the runtime knows only Diffusers' class names.
"""

from __future__ import annotations

from .base import SchedulerMixin
from .ddim import DDIMScheduler
from .ddpm import DDPMScheduler
from .dpmsolver_multistep import DPMSolverMultistepScheduler
from .dpmsolver_singlestep import DPMSolverSinglestepScheduler
from .euler import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from .flow_match import FlowMatchEulerDiscreteScheduler
from .flow_match_heun import FlowMatchHeunDiscreteScheduler
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
    "FlowMatchHeunDiscreteScheduler": FlowMatchHeunDiscreteScheduler,
}


def scheduler_class(class_name: str) -> type[SchedulerMixin]:
    """The Kiln class for a Diffusers scheduler class name (as in `model_index.json`)."""
    try:
        return SCHEDULER_CLASSES[class_name]
    except KeyError:
        known = ", ".join(sorted(SCHEDULER_CLASSES))
        raise ValueError(f"unknown scheduler class {class_name!r}; known: {known}") from None
