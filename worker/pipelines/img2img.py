"""Stable Diffusion image-to-image (SDEdit, Meng et al. 2022): noise the encoded input image to an
intermediate timestep chosen by `strength`, then denoise from there with the text condition."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from worker.lora import scaled_by
from worker.pipelines.diffusers_logs import pipeline_logger
from worker.pipelines.images import ImageInput, preprocess_image
from worker.pipelines.output import ImagePipelineOutput
from worker.pipelines.prompts import Prompt
from worker.pipelines.stable_diffusion import Generator, Sampling, StableDiffusionPipeline, StepCallback
from worker.schedulers import randn_tensor


def strength_timesteps(scheduler: Any, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The tail of the schedule that `strength` keeps.

    With n steps, the first n − min(int(n·strength), n) are skipped, so strength 1 runs them all
    and strength 0.5 starts halfway. Multi-evaluation schedulers (order > 1) skip `order` entries
    per step; the scheduler is told where it begins.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be between 0 and 1, got {strength}")
    kept = min(int(num_inference_steps * strength), num_inference_steps)
    start = max(num_inference_steps - kept, 0) * scheduler.order
    scheduler.set_begin_index(start)
    timesteps = scheduler.timesteps[start:]
    if len(timesteps) == 0:
        raise ValueError(
            f"strength {strength} with {num_inference_steps} steps leaves no step to run; "
            "raise strength or num_inference_steps"
        )
    return timesteps


def strength_schedule(pipe: Any, num_inference_steps: int, timesteps: list[int] | None,
                      sigmas: list[float] | None, strength: float) -> tuple[Any, torch.Tensor]:
    """A fresh scheduler from `pipe` and the timesteps `strength` keeps of it.

    With custom `timesteps` or `sigmas` the step count is their grid's length, not `num_inference_steps`.
    """
    scheduler = pipe.new_scheduler(num_inference_steps, timesteps, sigmas)
    steps = len(scheduler.timesteps) if timesteps or sigmas else num_inference_steps
    return scheduler, strength_timesteps(scheduler, steps, strength)


def repeat_to_batch(tensor: torch.Tensor, batch_size: int, what: str) -> torch.Tensor:
    """Tile a batch of k rows to `batch_size` rows ([a, b] -> [a, b, a, b]); k must divide it."""
    if tensor.shape[0] >= batch_size:
        return tensor
    if batch_size % tensor.shape[0]:
        raise ValueError(f"cannot repeat {tensor.shape[0]} {what} to a batch of {batch_size}")
    return torch.cat([tensor] * (batch_size // tensor.shape[0]))


class StableDiffusionImg2ImgPipeline(StableDiffusionPipeline):
    """Image-to-image with the same components as `StableDiffusionPipeline` (share them freely)."""

    prompt_log = pipeline_logger("stable_diffusion.pipeline_stable_diffusion_img2img")

    def planned_steps(self, num_inference_steps: int = 50, timesteps: list[int] | None = None,
                      sigmas: list[float] | None = None, strength: float = 0.8, **call_args: Any) -> int:
        """Denoising steps a call makes: the part of the schedule `strength` keeps."""
        return len(strength_schedule(self, num_inference_steps, timesteps, sigmas, strength)[1])

    def prepare_image_latents(
        self,
        scheduler: Any,
        image: torch.Tensor,
        timestep: torch.Tensor,
        batch_size: int,
        generator: Generator = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """x_t for the first kept timestep: encode the image (or take given latents) and add noise."""
        image = image.to(self.device, dtype)
        if image.shape[1] == self.latent_channels:
            latents = image
        else:
            if isinstance(generator, list):
                if len(generator) != batch_size:
                    raise ValueError(f"got {len(generator)} generators for {batch_size} images")
                image = repeat_to_batch(image, batch_size, "images")
            latents = self.encode_image(image, generator)
        latents = repeat_to_batch(latents, batch_size, "images")
        noise = randn_tensor(latents.shape, generator, self.device, dtype)
        return scheduler.add_noise(latents, noise, timestep)

    @scaled_by("cross_attention_kwargs")  # LoRA scale
    @torch.no_grad()
    def __call__(
        self,
        prompt: Prompt | None = None,
        image: ImageInput | None = None,
        strength: float = 0.8,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple[Any, None]:
        """Transform `image` towards `prompt`; `strength` in [0, 1] sets how much is redrawn."""
        if image is None:
            raise ValueError("image-to-image needs an `image`")
        cond = self._start_call(output_type, callback_on_step_end_tensor_inputs, guidance_scale, prompt,
                                num_images_per_prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                clip_skip)
        pixels = preprocess_image(image, multiple=self.vae_scale_factor)
        scheduler, kept = strength_schedule(self, num_inference_steps, timesteps, sigmas, strength)
        start = kept[:1].repeat(cond.batch_size)
        latents = self.prepare_image_latents(scheduler, pixels, start, cond.batch_size, generator,
                                             cond.prompt_embeds.dtype)
        sampling = Sampling(guidance_scale, guidance_rescale, generator, eta, callback_on_step_end,
                            callback_on_step_end_tensor_inputs)
        latents = self.denoise(latents, scheduler, kept, cond, sampling)
        return self.finish(latents, output_type, return_dict)
