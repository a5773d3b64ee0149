"""Run one job's parameters through a loaded pipeline and return its images.

Each task maps to the pipeline class that serves it, built over the cached pipeline's
components (a view: no copy) with a scheduler of the job's own, so concurrent jobs never share
step state.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from PIL import Image

from worker.schedulers import build_scheduler

# Called after every denoising step with (step, total); may raise to stop the job.
StepHook = Callable[[int, int], None]


# (model family, task) → name of the pipeline class in `worker.pipelines` that serves it.
TASK_PIPELINES: dict[tuple[str, str], str] = {
    ("ddpm", "unconditional"): "DDPMPipeline",
    ("sd", "text-to-image"): "StableDiffusionPipeline",
    ("sd", "image-to-image"): "StableDiffusionImg2ImgPipeline",
    ("sd", "inpaint"): "StableDiffusionInpaintPipeline",
    ("sdxl", "text-to-image"): "StableDiffusionXLPipeline",
}


def pipeline_for_task(cached: Any, family: str, task: str, scheduler_name: str) -> Any:
    """A pipeline of the class serving `task`, sharing `cached`'s components."""
    import worker.pipelines

    try:
        cls = getattr(worker.pipelines, TASK_PIPELINES[(family, task)])
    except KeyError:
        raise ValueError(f"no pipeline serves {task!r} for {family!r} models") from None
    scheduler = build_scheduler(scheduler_name, cached.scheduler)
    return cls(**{**cached.components, "scheduler": scheduler})


def planned_steps(scheduler: Any, params: dict[str, Any]) -> int:
    """How many denoising steps (model calls) the job will make: schedulers of order 2 such as
    Heun interleave extra timesteps, and image-to-image skips the first `1 - strength`."""
    probe = scheduler.clone()
    probe.set_timesteps(params["steps"])
    total = len(probe.timesteps)
    if params.get("strength") is not None and params["task"] in ("image-to-image", "inpaint"):
        total = max(1, round(total * params["strength"]))
    return total


def run_params(pipe: Any, params: dict[str, Any], on_step: StepHook) -> list[Image.Image]:
    """Call the pipeline with the job's parameters; the generator is seeded on the CPU so a
    seed gives the same image on every device."""
    generator = torch.Generator("cpu").manual_seed(params["seed"])
    total = planned_steps(pipe.scheduler, params)

    def callback(_pipe: Any, step: int, _t: Any, kwargs: dict) -> dict:
        on_step(min(step + 1, total), total)
        return kwargs

    kwargs: dict[str, Any] = {
        "num_inference_steps": total,
        "generator": generator,
        "output_type": "pil",
        "callback_on_step_end": callback,
    }
    if params["task"] == "unconditional":
        kwargs["batch_size"] = params["num_images"]
    else:
        kwargs.update(
            prompt=params["prompt"],
            negative_prompt=params.get("negative_prompt"),
            num_images_per_prompt=params["num_images"],
            guidance_scale=params["guidance_scale"],
            width=params["width"],
            height=params["height"],
        )
    with torch.inference_mode():
        return list(pipe(**kwargs).images)
