"""User-facing scheduler names: plain data, shared by the API (validation, listing) and the worker.

Each short name maps to a Diffusers-compatible scheduler class name and the config overrides
applied on top of the model's own `scheduler_config.json` (via `from_config`). The worker
resolves class names to classes in `worker.schedulers.registry`; the API never imports torch.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, NamedTuple


class SchedulerChoice(NamedTuple):
    class_name: str
    overrides: MappingProxyType
    description: str


def _choice(class_name: str, description: str, **overrides: Any) -> SchedulerChoice:
    return SchedulerChoice(class_name, MappingProxyType(overrides), description)


SCHEDULERS: MappingProxyType = MappingProxyType({
    "ddpm": _choice("DDPMScheduler", "DDPM ancestral sampling (slow, many steps)"),
    "ddim": _choice("DDIMScheduler", "DDIM, deterministic"),
    "pndm": _choice("PNDMScheduler", "PNDM / PLMS", skip_prk_steps=True),
    "lms": _choice("LMSDiscreteScheduler", "linear multistep (k-diffusion LMS)"),
    "euler": _choice("EulerDiscreteScheduler", "Euler (k-diffusion)"),
    "euler_a": _choice("EulerAncestralDiscreteScheduler", "Euler ancestral, stochastic"),
    "heun": _choice("HeunDiscreteScheduler", "Heun, 2 model calls per step"),
    "kdpm2": _choice("KDPM2DiscreteScheduler", "DPM-Solver-2 (k-diffusion), 2 model calls per step"),
    "dpmpp_2m": _choice(
        "DPMSolverMultistepScheduler", "DPM-Solver++ 2M", algorithm_type="dpmsolver++", solver_order=2
    ),
    "dpmpp_2m_karras": _choice(
        "DPMSolverMultistepScheduler", "DPM-Solver++ 2M with Karras sigmas",
        algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True,
    ),
    "dpmpp_sde": _choice(
        "DPMSolverMultistepScheduler", "DPM-Solver++ 2M SDE, stochastic",
        algorithm_type="sde-dpmsolver++", solver_order=2,
    ),
    "dpm_single": _choice("DPMSolverSinglestepScheduler", "DPM-Solver++ single-step"),
    "unipc": _choice("UniPCMultistepScheduler", "UniPC multistep"),
    "lcm": _choice("LCMScheduler", "LCM, for latent-consistency distilled models"),
})


def scheduler_names() -> list[str]:
    return list(SCHEDULERS)
