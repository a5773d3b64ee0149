"""User-facing scheduler names: plain data, shared by the API (validation, listing) and the worker.

Each short name maps to a Diffusers-compatible scheduler class name and the config overrides
applied on top of the model's own `scheduler_config.json` (via `from_config`). The worker
resolves class names to classes in `worker.schedulers.registry`; the API never imports torch.

Two kinds of model, two kinds of name (`SchedulerChoice.kind`):

- `diffusion`: ε / v / x_0-prediction models on a discrete ᾱ schedule (SD 1.x/2.x, SDXL, DDPM).
- `flow`: flow-matching models predicting velocity (FLUX, SD3). Their `scheduler_config.json`
  is a `FlowMatchEulerDiscreteScheduler` config (`shift`, `use_dynamic_shifting`, `base_shift`,
  `max_shift`, `time_shift_type`, `shift_terminal`, ...). `flow_euler` / `flow_heun` take it as is.
  For a solver that is not flow-native (DPM-Solver, UniPC), the worker first renames the keys in
  `FLOW_CONFIG_RENAMES` (`shift` → `flow_shift`), then applies the name's overrides, which set
  `use_flow_sigmas=True` and `prediction_type="flow_prediction"`. `use_dynamic_shifting`,
  `time_shift_type` and `shift_terminal` carry over under their own names, so the solver samples
  the same σ family: σ' = s σ / (1 + (s − 1) σ) with s = `shift`, or s = e^μ when the pipeline
  passes FLUX's resolution-dependent μ to `set_timesteps`.

`scheduler_kind(config)` tells which kind a model's scheduler config is; `scheduler_names(kind)`
lists the names that suit it. A name of the other kind is refused by the worker.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping, NamedTuple

DIFFUSION = "diffusion"
FLOW = "flow"
KINDS = (DIFFUSION, FLOW)

# Scheduler classes whose configs describe flow-matching models.
FLOW_SCHEDULER_CLASSES = frozenset({"FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler"})
# Keys of a FlowMatch config renamed for solvers that take a flow grid as an option.
FLOW_CONFIG_RENAMES: MappingProxyType = MappingProxyType({"shift": "flow_shift"})
_FLOW_GRID = MappingProxyType({"use_flow_sigmas": True, "prediction_type": "flow_prediction"})


class SchedulerChoice(NamedTuple):
    class_name: str
    overrides: MappingProxyType
    description: str
    kind: str = DIFFUSION


def _choice(class_name: str, description: str, **overrides: Any) -> SchedulerChoice:
    return SchedulerChoice(class_name, MappingProxyType(overrides), description)


def _flow_choice(class_name: str, description: str, **overrides: Any) -> SchedulerChoice:
    """A flow-model name: non-flow-native classes get the flow grid and velocity prediction."""
    grid = {} if class_name in FLOW_SCHEDULER_CLASSES else dict(_FLOW_GRID)
    return SchedulerChoice(class_name, MappingProxyType({**grid, **overrides}), description, FLOW)


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
    "flow_euler": _flow_choice("FlowMatchEulerDiscreteScheduler", "flow matching: Euler (the FLUX / SD3 default)"),
    "flow_heun": _flow_choice("FlowMatchHeunDiscreteScheduler", "flow matching: Heun, 2 model calls per step"),
    "flow_dpmpp_2m": _flow_choice(
        "DPMSolverMultistepScheduler", "flow matching: DPM-Solver++ 2M on the shifted flow σ grid",
        algorithm_type="dpmsolver++", solver_order=2,
    ),
    "flow_dpm_single": _flow_choice(
        "DPMSolverSinglestepScheduler", "flow matching: DPM-Solver++ single-step on the flow σ grid",
        algorithm_type="dpmsolver++",
    ),
    "flow_unipc": _flow_choice("UniPCMultistepScheduler", "flow matching: UniPC multistep on the flow σ grid"),
})

DEFAULT_SCHEDULERS: MappingProxyType = MappingProxyType({DIFFUSION: "dpmpp_2m", FLOW: "flow_euler"})


def scheduler_names(kind: str | None = None) -> list[str]:
    """Short names in listing order: all of them, or those suiting `kind` (`diffusion` or `flow`)."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown scheduler kind {kind!r}; allowed: {', '.join(KINDS)}")
    return [name for name, choice in SCHEDULERS.items() if kind is None or choice.kind == kind]


def scheduler_kind(config: Mapping[str, Any]) -> str:
    """`flow` for a flow-matching model's scheduler config (a FlowMatch class, or a flow grid), else `diffusion`.

    `config` is the parsed `scheduler_config.json` (its `_class_name` decides), or a scheduler's
    config, which carries no class name: then `use_flow_sigmas` or a `shift` key marks a flow model.
    """
    class_name = config.get("_class_name")
    if class_name is not None:
        return FLOW if class_name in FLOW_SCHEDULER_CLASSES or config.get("use_flow_sigmas") else DIFFUSION
    return FLOW if config.get("use_flow_sigmas") or "shift" in config else DIFFUSION


def flow_config_for(class_name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """A flow model's scheduler config as `class_name` reads it.

    Solvers that take the flow grid as an option get FlowMatch's `shift` as `flow_shift`;
    FlowMatch classes built from such a solver's config get `flow_shift` back as `shift`.
    """
    renames = dict(FLOW_CONFIG_RENAMES)
    if class_name in FLOW_SCHEDULER_CLASSES:
        renames = {new: old for old, new in renames.items()}
    kept = {key: value for key, value in config.items() if key not in renames}
    return {**kept, **{renames[key]: value for key, value in config.items() if key in renames}}
