"""SD3 image-to-image: the input image's latents moved to x_σ = (1 − σ)·x_0 + σ·ε at the first σ
that `strength` keeps (flow pipelines' rule), then integrated back with the text condition."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from worker.lora import scaled_by
from worker.pipelines.flow import flow_strength_timesteps, noise_to
from worker.pipelines.flow_pipeline import FlowSampling
from worker.pipelines.images import ImageInput, preprocess_image
from worker.pipelines.img2img import repeat_to_batch
from worker.pipelines.output import ImagePipelineOutput
from worker.pipelines.prompts import Prompt
from worker.pipelines.sd3 import StableDiffusion3Pipeline
from worker.pipelines.stable_diffusion import Generator, StepCallback
from worker.schedulers import randn_tensor


class StableDiffusion3Img2ImgPipeline(StableDiffusion3Pipeline):
    """SD3 image-to-image with the `StableDiffusion3Pipeline` components (share them freely)."""

    def prepare_image_latents(self, scheduler: Any, pixels: torch.Tensor, start: torch.Tensor, batch_size: int,
                              generator: Generator = None) -> torch.Tensor:
        """x_t at the first kept σ: encode the image (or take C-channel latents), tile to B rows, add noise."""
        device, dtype = self.execution_device, self.embeds_dtype
        pixels = pixels.to(device, dtype)
        if pixels.shape[1] == self.latent_channels:
            encoded = pixels
        else:
            if isinstance(generator, list) and len(generator) != batch_size:
                raise ValueError(f"got {len(generator)} generators for {batch_size} images; pass one per image")
            if isinstance(generator, list):
                pixels = repeat_to_batch(pixels, batch_size, "images")
            encoded = self.encode_image(pixels, generator)
        image_latents = repeat_to_batch(encoded.to(dtype), batch_size, "images")
        noise = randn_tensor(image_latents.shape, generator, device, dtype)
        return noise_to(scheduler, image_latents, noise, start)

    def planned_steps(self, num_inference_steps: int = 50, sigmas: list[float] | None = None,
                      height: int | None = None, width: int | None = None, mu: float | None = None,
                      strength: float = 0.6, **call_args: Any) -> int:
        """Denoising steps a call makes: the part of the schedule `strength` keeps."""
        height, width = self.default_size(height, width)
        return len(self.strength_schedule(num_inference_steps, height, width, sigmas, mu, strength)[1])

    def strength_schedule(self, num_inference_steps: int, height: int, width: int, sigmas: Sequence[float] | None,
                          mu: float | None, strength: float) -> tuple[Any, torch.Tensor]:
        """A fresh scheduler and the timesteps `strength` keeps (a σ grid counts as its own step count)."""
        scheduler = self.new_scheduler(num_inference_steps, self.image_seq_len(height, width), sigmas, mu)
        steps = num_inference_steps if sigmas is None else len(scheduler.timesteps)
        return scheduler, flow_strength_timesteps(scheduler, steps, strength)

    @scaled_by("joint_attention_kwargs")  # LoRA scale
    @torch.no_grad()
    def __call__(
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        prompt_3: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
        image: ImageInput | None = None,
        strength: float = 0.6,
        num_inference_steps: int = 50,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.0,
        negative_prompt: Prompt | None = None,
        negative_prompt_2: Prompt | None = None,
        negative_prompt_3: Prompt | None = None,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        max_sequence_length: int = 256,
        mu: float | None = None,
    ) -> ImagePipelineOutput | tuple[Any]:
        """Redraw `image` towards the prompt; `strength` in [0, 1] sets how much. Given `latents` are x_t."""
        if image is None:
            raise ValueError("image-to-image needs an `image`")
        height, width = self.default_size(height, width)
        cond = self._start_call(
            output_type, callback_on_step_end_tensor_inputs, guidance_scale, prompt=prompt, prompt_2=prompt_2,
            prompt_3=prompt_3, num_images_per_prompt=num_images_per_prompt, negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2, negative_prompt_3=negative_prompt_3, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds, clip_skip=clip_skip,
            max_sequence_length=max_sequence_length,
        )
        pixels = preprocess_image(image, height, width, multiple=self.vae_scale_factor,
                                  latent_channels=self.latent_channels)
        scheduler, kept = self.strength_schedule(num_inference_steps, height, width, sigmas, mu, strength)
        if latents is None:
            latents = self.prepare_image_latents(scheduler, pixels, kept[:1].repeat(cond.batch_size),
                                                 cond.batch_size, generator)
        sampling = FlowSampling(guidance_scale, None, generator, callback_on_step_end,
                                callback_on_step_end_tensor_inputs, {"joint_attention_kwargs": joint_attention_kwargs})
        latents = self.denoise(latents.to(self.execution_device, self.embeds_dtype), scheduler, kept, cond, sampling)
        return self.finish(latents, output_type, return_dict)
