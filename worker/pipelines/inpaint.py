"""Stable Diffusion inpainting: redraw the white part of a mask, keep the rest.

Two kinds of UNet are supported, as in Diffusers:
- 9 input channels (inpainting checkpoints): the UNet sees [latents, mask, masked-image latents];
- 4 input channels (any SD checkpoint): after every step the known region is replaced by the
  input image's latents noised to the next timestep (RePaint-style blending, Lugmayr et al. 2022).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from worker.lora import scaled_by
from worker.pipelines.img2img import repeat_to_batch, strength_schedule
from worker.pipelines.diffusers_logs import pipeline_logger
from worker.pipelines.images import ImageInput, preprocess_image, preprocess_mask
from worker.pipelines.mask_crop import check_padding_mask_crop, crop_for_call
from worker.pipelines.output import ImagePipelineOutput
from worker.pipelines.prompts import Prompt
from worker.pipelines.stable_diffusion import (
    SD_SCHEDULER_FIXES,
    Generator,
    Sampling,
    StableDiffusionPipeline,
    StepCallback,
)
from worker.schedulers import randn_tensor

INPAINT_SCHEDULER_FIXES = {**SD_SCHEDULER_FIXES, "skip_prk_steps": (lambda v: v is False, True)}


@dataclass
class InpaintLatents:
    """Per-job tensors of an inpainting run (B rows each).

    Attributes:
        latents: x_T to start denoising from (B, 4, h, w).
        noise: the ε drawn for x_T, reused to noise the known region at every step.
        image_latents: scaled latents of the input image, or None when not needed.
        mask: (B, 1, h, w) at latent resolution, 1 = repaint.
        masked_image_latents: (B, 4, h, w) latents of the image with the masked part blanked.
    """

    latents: torch.Tensor
    noise: torch.Tensor
    image_latents: torch.Tensor | None
    mask: torch.Tensor
    masked_image_latents: torch.Tensor


class StableDiffusionInpaintPipeline(StableDiffusionPipeline):
    """Text-guided inpainting with the Stable Diffusion components (9- or 4-channel UNet)."""

    scheduler_fixes = INPAINT_SCHEDULER_FIXES
    prompt_log = pipeline_logger("stable_diffusion.pipeline_stable_diffusion_inpaint")

    @property
    def unet_channels(self) -> int:
        channels = self.unet.config.in_channels
        if channels not in (4, 4 + 1 + self.latent_channels):
            raise ValueError(f"inpainting needs a UNet with 4 or 9 input channels, this one has {channels}")
        return channels

    def planned_steps(self, num_inference_steps: int = 50, timesteps: list[int] | None = None,
                      sigmas: list[float] | None = None, strength: float = 1.0, **call_args: Any) -> int:
        """Denoising steps a call makes: the part of the schedule `strength` keeps."""
        return len(strength_schedule(self, num_inference_steps, timesteps, sigmas, strength)[1])

    def prepare_start_latents(
        self, scheduler: Any, image: torch.Tensor, start: torch.Tensor, batch_size: int, height: int, width: int,
        generator: Generator, latents: torch.Tensor | None, full_strength: bool, dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(x_T, ε, image latents or None). Pure noise at strength 1, else the image noised to `start`."""
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for {batch_size} images; pass one per image")
        image_latents = None
        if self.unet_channels == 4 or (latents is None and not full_strength):
            image = image.to(self.device, dtype)
            encoded = image if image.shape[1] == self.latent_channels else self.encode_image(image, generator)
            image_latents = repeat_to_batch(encoded, batch_size, "images")
        if latents is not None:
            noise = latents.to(self.device)
            return noise * scheduler.init_noise_sigma, noise, image_latents
        noise = randn_tensor(self.latent_shape(batch_size, height, width), generator, self.device, dtype)
        if full_strength:
            return noise * scheduler.init_noise_sigma, noise, image_latents
        return scheduler.add_noise(image_latents, noise, start), noise, image_latents

    def prepare_mask_latents(
        self, mask: torch.Tensor, masked_image: torch.Tensor, batch_size: int, height: int, width: int,
        generator: Generator, dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask at latent size (B, 1, h, w) (nearest) and masked-image latents (B, 4, h, w)."""
        f = self.vae_scale_factor
        mask = torch.nn.functional.interpolate(mask, size=(height // f, width // f)).to(self.device, dtype)
        masked_image = masked_image.to(self.device, dtype)
        if masked_image.shape[1] != self.latent_channels:
            masked_image = self.encode_image(masked_image, generator)
        mask = repeat_to_batch(mask, batch_size, "masks")
        return mask, repeat_to_batch(masked_image, batch_size, "masked images").to(self.device, dtype)

    def blend_known_region(
        self, scheduler: Any, latents: torch.Tensor, state: InpaintLatents, next_timestep: Any | None
    ) -> torch.Tensor:
        """4-channel UNets: x ← (1 − m)·q(x_{t_next} | x_0 = image) + m·x (the image itself after the last step)."""
        known = state.image_latents
        if next_timestep is not None:
            known = scheduler.add_noise(known, state.noise, torch.as_tensor(next_timestep).reshape(1))
        return (1 - state.mask) * known + state.mask * latents

    def prepare_inpaint(
        self, scheduler: Any, image: ImageInput, mask_image: ImageInput, masked_image_latents: torch.Tensor | None,
        start: torch.Tensor, batch_size: int, height: int, width: int, generator: Generator,
        latents: torch.Tensor | None, full_strength: bool, dtype: torch.dtype,
    ) -> InpaintLatents:
        """Everything an inpainting job needs before its first step (consumes the generator in
        Diffusers' order: image encoding, noise, masked-image encoding)."""
        pixels = preprocess_image(image, height, width, multiple=self.vae_scale_factor).float()
        x_t, noise, image_latents = self.prepare_start_latents(
            scheduler, pixels, start, batch_size, height, width, generator, latents, full_strength, dtype
        )
        mask = preprocess_mask(mask_image, height, width, multiple=self.vae_scale_factor)
        masked = masked_image_latents if masked_image_latents is not None else pixels * (mask < 0.5)
        mask, masked = self.prepare_mask_latents(mask, masked, batch_size, height, width, generator, dtype)
        return InpaintLatents(x_t, noise, image_latents, mask, masked)

    @scaled_by("cross_attention_kwargs")  # LoRA scale
    @torch.no_grad()
    def __call__(
        self,
        prompt: Prompt | None = None,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        masked_image_latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        padding_mask_crop: int | None = None,
        strength: float = 1.0,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.5,
        negative_prompt: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        guidance_rescale: float = 0.0,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple[Any, None]:
        """Repaint the white region of `mask_image` in `image` following `prompt`.

        With `padding_mask_crop` (pixels), only the mask's bounding box plus that margin, grown to the
        aspect ratio of height × width, is inpainted at height × width and pasted back through the mask
        (PIL image and mask in, PIL out at the input's size; see `mask_crop`)."""
        if image is None or mask_image is None:
            raise ValueError("inpainting needs both `image` and `mask_image`")
        check_padding_mask_crop(padding_mask_crop, image, mask_image, output_type)
        height, width = self.default_size(height, width)
        crop, image, mask_image = crop_for_call(padding_mask_crop, image, mask_image, width, height, (width, height))
        channels = self.unet_channels  # a UNet that cannot inpaint fails before any encoding
        cond = self._start_call(output_type, callback_on_step_end_tensor_inputs, guidance_scale, prompt,
                                num_images_per_prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                clip_skip)
        scheduler, kept = strength_schedule(self, num_inference_steps, timesteps, sigmas, strength)
        state = self.prepare_inpaint(
            scheduler, image, mask_image, masked_image_latents, kept[:1].repeat(cond.batch_size), cond.batch_size,
            height, width, generator, latents, strength == 1.0, cond.prompt_embeds.dtype,
        )
        sampling = Sampling(guidance_scale, guidance_rescale, generator, eta, callback_on_step_end,
                            callback_on_step_end_tensor_inputs)
        if channels == 4:
            sampling.after_step = lambda i, t, x: self.blend_known_region(
                scheduler, x, state, kept[i + 1] if i + 1 < len(kept) else None
            )
        else:
            cond = cond.with_(extra_channels=torch.cat([state.mask, state.masked_image_latents], dim=1))
        latents = self.denoise(state.latents, scheduler, kept, cond, sampling)
        output = self.finish(latents, output_type, return_dict)
        return output if crop is None else crop.paste_into(output)
