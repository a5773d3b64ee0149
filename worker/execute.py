"""Run one job's parameters through a loaded model and return its images.

Each task maps to the pipeline class that serves it, built over the loaded pipeline's components
(a view: no copy) with a scheduler of the job's own and the model's denoiser behind the step
batcher, so concurrent jobs share model calls but never step state.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from PIL import Image

from worker.batching import BatchedDecoder, BatchedModule, BatchedTransformer, Session, StepBatcher
from worker.lora_serving import job_loras
from worker.job_scheduler import build_scheduler

# Called after every denoising step with (step, total); may raise to stop the job.
StepHook = Callable[[int, int], None]

# (model family, task) → name of the pipeline class in `worker.pipelines` that serves it.
TASK_PIPELINES: dict[tuple[str, str], str] = {
    ("ddpm", "unconditional"): "DDPMPipeline",
    ("sd", "text-to-image"): "StableDiffusionPipeline",
    ("sd", "image-to-image"): "StableDiffusionImg2ImgPipeline",
    ("sd", "inpaint"): "StableDiffusionInpaintPipeline",
    ("sdxl", "text-to-image"): "StableDiffusionXLPipeline",
    ("flux", "text-to-image"): "FluxPipeline",
    ("flux", "image-to-image"): "FluxImg2ImgPipeline",
    ("flux", "inpaint"): "FluxInpaintPipeline",
    ("sd3", "text-to-image"): "StableDiffusion3Pipeline",
    ("sd3", "image-to-image"): "StableDiffusion3Img2ImgPipeline",
}

# The denoiser's component name → the stand-in that sends its calls through the step batcher.
# A pipeline has one of these (UNet families: `unet`; FLUX and SD3: `transformer`).
DENOISERS: dict[str, type] = {"unet": BatchedModule, "transformer": BatchedTransformer}

# Family-only params → the pipeline argument each becomes (FLUX: true CFG, T5 length; SD3: length).
FAMILY_KWARGS: dict[str, dict[str, str]] = {
    "flux": {"true_cfg_scale": "true_cfg_scale", "max_sequence_length": "max_sequence_length"},
    "sd3": {"max_sequence_length": "max_sequence_length"},
}

# Families whose image-to-image and inpaint pipelines take `width`/`height` (defaulting to the
# model's native size, not the input's); the UNet families' take the input image's size.
SIZED_IMAGE_FAMILIES = frozenset({"flux", "sd3"})


def denoiser_name(pipeline: Any) -> str:
    """The component name of the pipeline's denoiser."""
    for name in DENOISERS:
        if getattr(pipeline, name, None) is not None:
            return name
    raise ValueError(f"{type(pipeline).__name__} has no denoiser (looked for {', '.join(DENOISERS)})")


@dataclass
class LoadedModel:
    """A pipeline held by the cache, with the batchers its jobs share: one for denoiser steps and,
    for latent models, one for VAE decodes."""

    name: str
    pipeline: Any
    batcher: StepBatcher
    decoder: StepBatcher | None = None
    denoiser: str = "unet"

    @property
    def components(self) -> dict[str, Any]:
        return self.pipeline.components if self.pipeline is not None else {}

    def close(self) -> None:
        """Stop the batcher threads and drop the pipeline (the cache calls this once the model is
        evicted and no job uses it), so its memory can be freed."""
        self.batcher.close()
        if self.decoder is not None:
            self.decoder.close()
        self.pipeline = None


def call_cost_cap(pipeline: Any, max_rows: int, size: tuple[int, int]) -> int:
    """The most latent elements one batched call may carry: `max_rows` rows of a `size` (w, h)
    image. A request bigger than that runs alone, so a call never takes much longer than a full
    batch of default-size jobs.

    A row's elements are C × (w / s) × (h / s): s the VAE's downscale (1 in pixel space), C the
    latent channels, or a UNet's input channels where more (inpainting's 9). FLUX's packed
    (tokens, 64) rows hold the same count as their (16, h/s, w/s) latents.
    """
    vae, denoiser = getattr(pipeline, "vae", None), getattr(pipeline, denoiser_name(pipeline))
    scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    channels = vae.config.latent_channels if vae is not None else denoiser.config.in_channels
    if denoiser_name(pipeline) == "unet":
        channels = max(channels, denoiser.config.in_channels)
    width, height = size
    return max_rows * channels * (width // scale) * (height // scale)


def load_model(name: str, pipeline: Any, max_rows: int, max_call_cost: int | None = None) -> LoadedModel:
    """The cache's value for a pipeline: its batchers started (`max_call_cost`: see `call_cost_cap`)."""
    decoder = None
    vae = getattr(pipeline, "vae", None)
    # An fp16 SDXL VAE upcasts itself around each decode (under the pipeline's own lock): it
    # decodes alone rather than from the batcher's thread.
    upcasts = hasattr(pipeline, "_vae_upcast_lock") and vae is not None and vae.dtype == torch.float16
    if vae is not None and not upcasts:
        decoder = StepBatcher(vae, max_rows=max_rows, name=f"{name}-vae", method="decode", min_window_s=0.005)
    denoiser = denoiser_name(pipeline)
    batcher = StepBatcher(getattr(pipeline, denoiser), max_rows=max_rows, name=name, max_call_cost=max_call_cost)
    return LoadedModel(name, pipeline, batcher, decoder, denoiser)


def pipeline_for_task(loaded: LoadedModel, family: str, task: str, scheduler: str | Any,
                      session: Session | None = None, decode_session: Session | None = None) -> Any:
    """A pipeline of the class serving `task`, sharing `loaded`'s components; with sessions, its
    denoiser calls (and VAE decodes) go through the model's batchers. `scheduler` is a short name
    (`shared.schedulers`) or a scheduler of the job's own."""
    import worker.pipelines

    try:
        cls = getattr(worker.pipelines, TASK_PIPELINES[(family, task)])
    except KeyError:
        raise ValueError(f"no pipeline serves {task!r} for {family!r} models") from None
    components = dict(loaded.components)
    components["scheduler"] = (build_scheduler(scheduler, loaded.pipeline.scheduler) if isinstance(scheduler, str)
                               else scheduler)
    if session is not None:
        components[loaded.denoiser] = DENOISERS[loaded.denoiser](loaded.components[loaded.denoiser], session)
    if decode_session is not None:
        components["vae"] = BatchedDecoder(loaded.pipeline.vae, decode_session)
    return cls(**components)


def _unet_skipped(steps: int, strength: float) -> int:
    return steps - min(int(steps * strength), steps)  # the product floored first (SD pipelines)


def _flow_skipped(steps: int, strength: float) -> int:
    return int(max(steps - min(steps * strength, steps), 0))  # the difference floored (FLUX, SD3)


# Family → how many of `steps` image-to-image skips at `strength` (the pipelines' own rounding).
SKIPPED_STEPS: dict[str, Callable[[int, float], int]] = {"flux": _flow_skipped, "sd3": _flow_skipped}


def planned_steps(scheduler: Any, params: dict[str, Any], family: str = "sd") -> int:
    """How many denoising steps (model calls) the job will make: schedulers of order 2 such as
    Heun interleave extra timesteps, and image-to-image skips the first `1 - strength`."""
    probe = scheduler.clone()
    steps = params["steps"]
    # A dynamically shifted flow schedule needs the resolution's μ; the step count does not depend on it.
    probe.set_timesteps(steps, **({"mu": 1.0} if probe.config.get("use_dynamic_shifting") else {}))
    total = len(probe.timesteps)
    if params.get("strength") is not None and params["task"] in ("image-to-image", "inpaint"):
        total -= SKIPPED_STEPS.get(family, _unet_skipped)(steps, params["strength"]) * probe.order
    return max(total, 1)


def call_kwargs(params: dict[str, Any], family: str = "sd") -> dict[str, Any]:
    """The pipeline call's arguments for a job's parameters (the generator is added later).
    Image tasks run at the input image's size, which `fit_inputs` made the job's."""
    kwargs: dict[str, Any] = {"num_inference_steps": params["steps"], "output_type": "pil"}
    if params["task"] == "unconditional":
        kwargs["batch_size"] = params["num_images"]
        return kwargs
    kwargs.update(
        prompt=params["prompt"],
        negative_prompt=params.get("negative_prompt"),
        num_images_per_prompt=params["num_images"],
        guidance_scale=params["guidance_scale"],
    )
    for param, argument in FAMILY_KWARGS.get(family, {}).items():
        if params.get(param) is not None:
            kwargs[argument] = params[param]
    if params["task"] == "text-to-image" or family in SIZED_IMAGE_FAMILIES:
        kwargs.update(width=params["width"], height=params["height"])
    if params["task"] != "text-to-image":
        kwargs["strength"] = params["strength"]
    return kwargs


def fit_inputs(inputs: dict[str, Image.Image], params: dict[str, Any]) -> dict[str, Image.Image]:
    """Input images at the job's size (the API stores them so; older records may differ)."""
    size = (params.get("width"), params.get("height"))
    if None in size:
        return dict(inputs)
    return {name: image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
            for name, image in inputs.items()}


def spatial_latents(pipe: Any, latents: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """Latents as (B, C, h, w) for a preview: FLUX's packed (B, h/2 · w/2, 4C) tokens unpacked."""
    if latents.ndim != 3:
        return latents
    from worker.pipelines.flow import packed_latent_size, unpack_latents

    h, w = packed_latent_size(params["height"], params["width"], pipe.vae_scale_factor)
    return unpack_latents(latents, h, w)


def run_params(loaded: LoadedModel, family: str, params: dict[str, Any], on_step: StepHook,
               inputs: dict[str, Image.Image] | None = None,
               on_preview: Callable[[int, torch.Tensor], None] | None = None,
               catalog: Any = None) -> list[Image.Image]:
    """Run a job in the model's shared batch. The generator is seeded on the CPU so a seed
    gives the same image on every device. `on_preview(step, latents)` runs every
    `params["preview_every"]` steps (not after the last: the result follows). A job with
    `params["loras"]` needs the `catalog` that names their files."""
    every = params.get("preview_every") or 0
    decoding = loaded.decoder.session() if loaded.decoder is not None else contextlib.nullcontext()
    with loaded.batcher.session() as session, decoding as decode_session:
        pipe = pipeline_for_task(loaded, family, params["task"], params["scheduler"], session, decode_session)
        total = planned_steps(pipe.scheduler, params, family)

        def callback(_pipe: Any, index: int, _t: Any, tensors: dict) -> dict:
            step = min(index + 1, total)
            if step == total:
                session.leave()  # no more denoiser calls: don't hold the batch back while decoding
            on_step(step, total)
            if on_preview is not None and every and step % every == 0 and step < total:
                on_preview(step, spatial_latents(pipe, tensors["latents"], params))
            return tensors

        kwargs = call_kwargs(params, family) | fit_inputs(inputs or {}, params)
        generator = torch.Generator("cpu").manual_seed(params["seed"])
        with torch.inference_mode(), job_loras(loaded.pipeline, params, catalog, session):
            return list(pipe(**kwargs, generator=generator, callback_on_step_end=callback).images)
