"""One job through a loaded model: the pipeline class serving its task, its call arguments from
the job's `JobParams`, and the denoising loop's hook for progress, cancel and previews.

The pipeline is built over the loaded pipeline's components (a view: no copy) with a scheduler of
the job's own and the model's denoiser behind the step batcher, so concurrent jobs share model
calls but never step state. The pipeline says how many steps its call makes (`planned_steps`);
the step hook sees exactly 1 … that many.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from PIL import Image

from shared.jobs.params import JobParams, Task
from worker.batching import BatchedDecoder, Session
from worker.loaded_model import DENOISERS, LoadedModel
from worker.lora_serving import job_loras
from worker.pipelines import (DDPMPipeline, FluxImg2ImgPipeline, FluxInpaintPipeline, FluxPipeline,
                              StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline,
                              StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline,
                              StableDiffusionXLPipeline)
from worker.job_scheduler import build_scheduler

# Called after every denoising step with (step, total); may raise to stop the job.
StepHook = Callable[[int, int], None]
# Called every `preview_every` steps with (step, latents as (B, C, h, w)).
PreviewHook = Callable[[int, torch.Tensor], None]

# (model family, task) → the pipeline class that serves it.
TASK_PIPELINES: dict[tuple[str, Task], type] = {
    ("ddpm", Task.UNCONDITIONAL): DDPMPipeline,
    ("sd", Task.TEXT_TO_IMAGE): StableDiffusionPipeline,
    ("sd", Task.IMAGE_TO_IMAGE): StableDiffusionImg2ImgPipeline,
    ("sd", Task.INPAINT): StableDiffusionInpaintPipeline,
    ("sdxl", Task.TEXT_TO_IMAGE): StableDiffusionXLPipeline,
    ("flux", Task.TEXT_TO_IMAGE): FluxPipeline,
    ("flux", Task.IMAGE_TO_IMAGE): FluxImg2ImgPipeline,
    ("flux", Task.INPAINT): FluxInpaintPipeline,
    ("sd3", Task.TEXT_TO_IMAGE): StableDiffusion3Pipeline,
    ("sd3", Task.IMAGE_TO_IMAGE): StableDiffusion3Img2ImgPipeline,
}

# Families whose image-to-image and inpaint pipelines take `width`/`height` (defaulting to the
# model's native size, not the input's); the UNet families' take the input image's size.
SIZED_IMAGE_FAMILIES = frozenset({"flux", "sd3"})


def pipeline_for_task(loaded: LoadedModel, family: str, task: str | Task, scheduler: str | Any,
                      session: Session | None = None, decode_session: Session | None = None) -> Any:
    """A pipeline of the class serving `task`, sharing `loaded`'s components; with sessions, its
    denoiser calls (and VAE decodes) go through the model's batchers. `scheduler` is a short name
    (`shared.schedulers`) or a scheduler of the job's own."""
    try:
        cls = TASK_PIPELINES[(family, Task(task))]
    except (KeyError, ValueError):
        raise ValueError(f"no pipeline serves {task!r} for {family!r} models") from None
    components = dict(loaded.components)
    components["scheduler"] = (build_scheduler(scheduler, loaded.pipeline.scheduler) if isinstance(scheduler, str)
                               else scheduler)
    if session is not None:
        components[loaded.denoiser] = DENOISERS[loaded.denoiser](loaded.components[loaded.denoiser], session)
    if decode_session is not None:
        components["vae"] = BatchedDecoder(loaded.pipeline.vae, decode_session)
    return cls(**components)


def call_kwargs(params: JobParams, family: str = "sd") -> dict[str, Any]:
    """The pipeline call's arguments for a job's parameters (the generator is added later).
    Image tasks run at the input image's size, which `fit_inputs` made the job's."""
    kwargs: dict[str, Any] = {"num_inference_steps": params.steps, "output_type": "pil"}
    if params.task is Task.UNCONDITIONAL:
        return kwargs | {"batch_size": params.num_images}
    kwargs.update(prompt=params.prompt, negative_prompt=params.negative_prompt,
                  num_images_per_prompt=params.num_images, guidance_scale=params.guidance_scale,
                  **params.family_kwargs())
    if params.task is Task.TEXT_TO_IMAGE or family in SIZED_IMAGE_FAMILIES:
        kwargs.update(width=params.width, height=params.height)
    if params.task is not Task.TEXT_TO_IMAGE:
        kwargs["strength"] = params.strength
    return kwargs


def fit_inputs(inputs: dict[str, Image.Image], params: JobParams) -> dict[str, Image.Image]:
    """Input images at the job's size (the API stores them so; older records may differ)."""
    size = (params.width, params.height)
    if None in size:
        return dict(inputs)
    return {name: image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
            for name, image in inputs.items()}


def spatial_latents(pipe: Any, latents: torch.Tensor, params: JobParams) -> torch.Tensor:
    """Latents as (B, C, h, w) for a preview: FLUX's packed (B, h/2 · w/2, 4C) tokens unpacked."""
    if latents.ndim != 3:
        return latents
    from worker.pipelines.flow import packed_latent_size, unpack_latents

    h, w = packed_latent_size(params.height, params.width, pipe.vae_scale_factor)
    return unpack_latents(latents, h, w)


def run_params(loaded: LoadedModel, family: str, params: JobParams, on_step: StepHook,
               inputs: dict[str, Image.Image] | None = None, on_preview: PreviewHook | None = None,
               catalog: Any = None) -> list[Image.Image]:
    """Run a job in the model's shared batch. The generator is seeded on the CPU so a seed
    gives the same image on every device. `on_preview(step, latents)` runs every
    `params.preview_every` steps (not after the last: the result follows). A job with LoRA
    adapters needs the `catalog` that names their files."""
    decoding = loaded.decoder.session() if loaded.decoder is not None else contextlib.nullcontext()
    with loaded.batcher.session() as session, decoding as decode_session:
        pipe = pipeline_for_task(loaded, family, params.task, params.scheduler, session, decode_session)
        kwargs = call_kwargs(params, family) | fit_inputs(inputs or {}, params)
        callback = _step_callback(pipe, pipe.planned_steps(**kwargs), params, session, decode_session, on_step,
                                  on_preview)
        generator = torch.Generator("cpu").manual_seed(params.seed)
        with torch.inference_mode(), job_loras(loaded.pipeline, params.adapters(), catalog, session):
            return list(pipe(**kwargs, generator=generator, callback_on_step_end=callback).images)


def _step_callback(pipe: Any, total: int, params: JobParams, session: Session, decode_session: Session | None,
                   on_step: StepHook, on_preview: PreviewHook | None) -> Callable[..., dict]:
    """The pipeline's `callback_on_step_end`: step `index + 1` of `total` is done."""
    every = params.preview_every or 0

    def callback(_pipe: Any, index: int, _t: Any, tensors: dict) -> dict:
        step = index + 1
        if step == total:
            if decode_session is not None:  # jobs finishing in the same step share one decode call
                decode_session.join()
            session.leave()  # no more denoiser calls: don't hold the batch back while decoding
        on_step(step, total)
        if on_preview is not None and every and step % every == 0 and step < total:
            on_preview(step, spatial_latents(pipe, tensors["latents"], params))
        return tensors

    return callback
