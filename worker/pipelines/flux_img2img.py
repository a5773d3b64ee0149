"""FLUX image-to-image and inpainting (SDEdit on a rectified flow): the input image's latents are moved
to x_σ = (1 − σ)·x_0 + σ·ε at the first σ that `strength` keeps, then integrated back to σ = 0.
Inpainting also puts the known region back after every step, noised to the next σ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from worker.lora import scaled_by
from worker.pipelines.flow import flow_strength_timesteps, noise_to, pack_latents
from worker.pipelines.flux import FluxPipeline
from worker.pipelines.images import ImageInput, preprocess_image, preprocess_mask
from worker.pipelines.mask_crop import check_padding_mask_crop, crop_for_call
from worker.pipelines.img2img import repeat_to_batch
from worker.pipelines.output import ImagePipelineOutput
from worker.pipelines.prompts import Prompt
from worker.pipelines.stable_diffusion import Generator, StepCallback
from worker.schedulers import randn_tensor


@dataclass
class FluxStart:
    """Packed tensors of an image-conditioned FLUX job (B rows, S = h/2 · w/2 tokens of 4C).

    Attributes:
        latents: x at the first kept σ.
        noise: the ε drawn for it (inpainting re-noises the known region with it).
        image_latents: the input image's latents x_0.
    """

    latents: torch.Tensor
    noise: torch.Tensor
    image_latents: torch.Tensor


class FluxImg2ImgPipeline(FluxPipeline):
    """FLUX image-to-image with the `FluxPipeline` components (share them freely)."""

    given_latents_are_noise = False

    def preprocess(self, image: ImageInput, height: int, width: int) -> torch.Tensor:
        """User images -> (B, 3, H, W) in [−1, 1], resized to (height, width) floored to whole 2×2 patches."""
        return preprocess_image(image, height, width, multiple=self.vae_scale_factor * 2,
                                latent_channels=self.latent_channels)

    def strength_schedule(self, num_inference_steps: int, image_seq_len: int, sigmas: Sequence[float] | None,
                          strength: float) -> tuple[Any, torch.Tensor]:
        """A fresh scheduler and the timesteps `strength` keeps; a σ grid counts as its own step count."""
        scheduler = self.new_scheduler(num_inference_steps, image_seq_len, sigmas)
        steps = num_inference_steps if scheduler.config.get("use_flow_sigmas") else len(scheduler.timesteps)
        return scheduler, flow_strength_timesteps(scheduler, steps, strength)

    def planned_steps(self, num_inference_steps: int = 28, sigmas: list[float] | None = None,
                      height: int | None = None, width: int | None = None, strength: float = 0.6,
                      **call_args: Any) -> int:
        """Denoising steps a call makes: the part of the schedule `strength` keeps."""
        return len(self.strength_schedule(num_inference_steps, self.image_tokens(height, width), sigmas, strength)[1])

    def prepare_start(self, scheduler: Any, pixels: torch.Tensor, start: torch.Tensor, batch_size: int,
                      height: int, width: int, generator: Generator = None,
                      latents: torch.Tensor | None = None) -> FluxStart:
        """Encode the image (pixels, or latents with C channels), tile it to B rows, noise it to `start`.

        Given `latents` are packed x_t for image-to-image (used as they are, the image is not
        encoded) and spatial noise ε (B, C, h, w) for inpainting (`given_latents_are_noise`), as in Diffusers.
        """
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for {batch_size} images; pass one per image")
        device, dtype = self.execution_device, self.embeds_dtype
        if latents is not None and not self.given_latents_are_noise:
            packed = latents.to(device, dtype)
            return FluxStart(packed, packed, packed)
        pixels = pixels.to(device, dtype)
        encoded = pixels if pixels.shape[1] == self.latent_channels else self.encode_image(pixels, generator)
        image_latents = repeat_to_batch(encoded.to(dtype), batch_size, "images")
        h, w = self.latent_size(height, width)
        if latents is None:
            noise = randn_tensor((batch_size, self.latent_channels, h, w), generator, device, dtype)
            latents = noise_to(scheduler, image_latents, noise, start)
        else:
            noise = latents = latents.to(device, dtype)
        return FluxStart(pack_latents(latents), pack_latents(noise), pack_latents(image_latents))

    def _image_call(self, output_type: str, callback_inputs: Sequence[str], true_cfg_scale: float,
                    encode_kwargs: dict[str, Any], image: ImageInput, height: int | None, width: int | None,
                    num_inference_steps: int, sigmas: Sequence[float] | None, strength: float):
        """What image-conditioned calls start with: the conditioning, the pixels and the cut schedule."""
        if image is None:
            raise ValueError(f"{type(self).__name__} needs an `image`")
        height, width = self.default_size(height, width)
        negative = encode_kwargs["negative_prompt"] is not None or encode_kwargs["negative_prompt_embeds"] is not None
        cond = self._start_call(output_type, callback_inputs, true_cfg_scale, negative, **encode_kwargs)
        pixels = self.preprocess(image, height, width)
        h, w = self.latent_size(height, width)
        scheduler, kept = self.strength_schedule(num_inference_steps, (h // 2) * (w // 2), sigmas, strength)
        return cond, pixels, height, width, scheduler, kept

    @scaled_by("joint_attention_kwargs")  # LoRA scale
    @torch.no_grad()
    def __call__(
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        negative_prompt: Prompt | None = None,
        negative_prompt_2: Prompt | None = None,
        true_cfg_scale: float = 1.0,
        image: ImageInput | None = None,
        height: int | None = None,
        width: int | None = None,
        strength: float = 0.6,
        num_inference_steps: int = 28,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.0,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        max_sequence_length: int = 512,
    ) -> ImagePipelineOutput | tuple[Any]:
        """Redraw `image` towards the prompt; `strength` in [0, 1] sets how much (as Diffusers' pipeline)."""
        encode_kwargs = dict(
            prompt=prompt, prompt_2=prompt_2, num_images_per_prompt=num_images_per_prompt,
            prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            max_sequence_length=max_sequence_length, negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2, negative_prompt_embeds=negative_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        )
        cond, pixels, height, width, scheduler, kept = self._image_call(
            output_type, callback_on_step_end_tensor_inputs, true_cfg_scale, encode_kwargs, image, height, width,
            num_inference_steps, sigmas, strength)
        start = self.prepare_start(scheduler, pixels, kept[:1].repeat(cond.batch_size), cond.batch_size,
                                   height, width, generator, latents)
        sampling = self.sampling(start.latents, cond, height, width, guidance_scale, true_cfg_scale, generator,
                                 joint_attention_kwargs, callback_on_step_end, callback_on_step_end_tensor_inputs)
        latents = self.denoise(start.latents, scheduler, kept, cond, sampling)
        return self.finish(latents, output_type, return_dict, self.unpacker(height, width))


class FluxInpaintPipeline(FluxImg2ImgPipeline):
    """FLUX inpainting with a plain (16-channel-latent) FLUX transformer: repaint where the mask is white.

    After every step the known region is replaced by the image latents noised to the next σ (the
    blend of RePaint, Lugmayr et al. 2022). `masked_image_latents` is accepted for Diffusers'
    signature; this transformer does not take it (FLUX Fill models do), so it is not computed.
    """

    given_latents_are_noise = True

    def prepare_mask(self, mask_image: ImageInput, batch_size: int, height: int, width: int) -> torch.Tensor:
        """User mask -> packed (B, S, 4C) in {0, 1}: binarised, resized to latent size (nearest), tiled."""
        f2 = self.vae_scale_factor * 2
        mask = preprocess_mask(mask_image, height, width, multiple=f2)
        h, w = self.latent_size(height, width)
        mask = torch.nn.functional.interpolate(mask, size=(h, w)).to(self.execution_device, self.embeds_dtype)
        mask = repeat_to_batch(mask, batch_size, "masks")
        return pack_latents(mask.repeat(1, self.latent_channels, 1, 1))

    def blend(self, scheduler: Any, latents: torch.Tensor, start: FluxStart, mask: torch.Tensor,
              next_timestep: torch.Tensor | None) -> torch.Tensor:
        """x ← (1 − m)·x_known + m·x, x_known = the image at the next σ (the image itself after the last step)."""
        known = start.image_latents
        if next_timestep is not None:
            known = noise_to(scheduler, known, start.noise, next_timestep.reshape(1))
        return (1 - mask) * known + mask * latents

    @scaled_by("joint_attention_kwargs")  # LoRA scale
    @torch.no_grad()
    def __call__(
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        negative_prompt: Prompt | None = None,
        negative_prompt_2: Prompt | None = None,
        true_cfg_scale: float = 1.0,
        image: ImageInput | None = None,
        mask_image: ImageInput | None = None,
        masked_image_latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        padding_mask_crop: int | None = None,
        strength: float = 0.6,
        num_inference_steps: int = 28,
        sigmas: list[float] | None = None,
        guidance_scale: float = 7.0,
        num_images_per_prompt: int = 1,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        max_sequence_length: int = 512,
    ) -> ImagePipelineOutput | tuple[Any]:
        """Repaint the white region of `mask_image` in `image` following the prompt; `padding_mask_crop`
        inpaints only a padded crop around the mask and pastes it back (as the SD inpaint pipeline)."""
        if mask_image is None:
            raise ValueError("inpainting needs a `mask_image`")
        check_padding_mask_crop(padding_mask_crop, image, mask_image, output_type)
        height, width = self.default_size(height, width)
        f2 = self.vae_scale_factor * 2  # the crop is computed at the size the pixels are floored to
        crop, image, mask_image = crop_for_call(padding_mask_crop, image, mask_image, width, height,
                                                (width - width % f2, height - height % f2))
        encode_kwargs = dict(
            prompt=prompt, prompt_2=prompt_2, num_images_per_prompt=num_images_per_prompt,
            prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            max_sequence_length=max_sequence_length, negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2, negative_prompt_embeds=negative_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        )
        cond, pixels, height, width, scheduler, kept = self._image_call(
            output_type, callback_on_step_end_tensor_inputs, true_cfg_scale, encode_kwargs, image, height, width,
            num_inference_steps, sigmas, strength)
        start = self.prepare_start(scheduler, pixels, kept[:1].repeat(cond.batch_size), cond.batch_size,
                                   height, width, generator, latents)
        mask = self.prepare_mask(mask_image, cond.batch_size, height, width)
        sampling = self.sampling(start.latents, cond, height, width, guidance_scale, true_cfg_scale, generator,
                                 joint_attention_kwargs, callback_on_step_end, callback_on_step_end_tensor_inputs)
        sampling.after_step = lambda i, t, x: self.blend(
            scheduler, x, start, mask, kept[i + 1] if i + 1 < len(kept) else None)
        latents = self.denoise(start.latents, scheduler, kept, cond, sampling)
        output = self.finish(latents, output_type, return_dict, self.unpacker(height, width))
        return output if crop is None else crop.paste_into(output)
