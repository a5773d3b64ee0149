"""Stable Diffusion XL text-to-image (Podell et al. 2023, "SDXL: Improving Latent Diffusion Models
for High-Resolution Image Synthesis").

Differences from SD 1.x, all expressed through `Conditioning`: two text encoders whose penultimate
states are concatenated (768 + 1280 = 2048 channels), a pooled projected embedding from the second,
and "micro-conditioning" time ids (original size, crop top-left, target size) that the UNet embeds
and adds to its time embedding.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Sequence

import torch

from worker.lora import lora_scale as text_lora_scale
from worker.lora import scaled_by
from worker.pipelines.conditioning import Conditioning
from worker.pipelines.diffusers_logs import pipeline_logger
from worker.pipelines.output import ImagePipelineOutput
from worker.pipelines.prompts import Prompt, as_prompt_list, encode_penultimate, negative_prompts, repeat_per_image
from worker.pipelines.stable_diffusion import (
    Generator,
    Sampling,
    StableDiffusionPipeline,
    StepCallback,
    _check_prompt_args,
)

logger = logging.getLogger(__name__)

Size = tuple[int, int]


class StableDiffusionXLPipeline(StableDiffusionPipeline):
    """SDXL base text-to-image; `text_encoder`/`tokenizer` may be None (refiner-style checkpoints)."""

    optional_components = ("tokenizer", "text_encoder", "image_encoder", "feature_extractor")
    _optional_components = list(optional_components)
    option_names = ("force_zeros_for_empty_prompt",)
    scheduler_fixes: dict = {}
    prompt_log = pipeline_logger("stable_diffusion_xl.pipeline_stable_diffusion_xl")
    callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds", "add_text_embeds", "add_time_ids",
                              "negative_pooled_prompt_embeds", "negative_add_time_ids")
    _callback_tensor_inputs = list(callback_tensor_inputs)

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        text_encoder_2: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        unet: Any,
        scheduler: Any,
        image_encoder: Any = None,
        feature_extractor: Any = None,
        force_zeros_for_empty_prompt: bool = True,
    ) -> None:
        self.register_components(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
            tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, image_encoder=image_encoder,
            feature_extractor=feature_extractor,
        )
        self.register_options(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self._vae_upcast_lock = threading.Lock()  # the fp16 upcast below mutates the shared VAE

    def _encoders(self) -> list[tuple[Any, Any]]:
        pairs = [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]
        return [(tok, enc) for tok, enc in pairs if enc is not None]

    def _embeds_dtype(self) -> torch.dtype:
        return (self.text_encoder_2 or self.unet).dtype

    def _encode_texts(self, texts_per_encoder: list[list[str]], clip_skip: int | None,
                      max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated penultimate states (N, L, ΣD) and the pooled embedding (N, P)."""
        states, pooled = [], None
        for (tokenizer, encoder), texts in zip(self._encoders(), texts_per_encoder):
            hidden, projected = encode_penultimate(encoder, tokenizer, texts, clip_skip, max_length, self.prompt_log)
            states.append(hidden)
            pooled = projected if pooled is None else pooled
        if pooled is None:
            raise ValueError("SDXL needs a text encoder with a projection (CLIPTextModelWithProjection)")
        return torch.cat(states, dim=-1), pooled

    def encode_prompt(  # type: ignore[override]
        self,
        prompt: Prompt | None,
        prompt_2: Prompt | None = None,
        device: torch.device | str | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: Prompt | None = None,
        negative_prompt_2: Prompt | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
        *,
        guided: bool | None = None,
    ) -> tuple[torch.Tensor | None, ...] | Conditioning:
        """Diffusers' signature: `(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
        negative_pooled_prompt_embeds)`, B·n rows each (negatives None without guidance).

        With Kiln's earlier keyword `guided=`, returns a `Conditioning` (see `encode_conditioning`).
        """
        guided_now = do_classifier_free_guidance if guided is None else guided
        with text_lora_scale(lora_scale):
            cond = self.encode_conditioning(
                prompt, num_images_per_prompt, guided_now, negative_prompt, prompt_embeds, negative_prompt_embeds,
                clip_skip, prompt_2, negative_prompt_2, pooled_prompt_embeds, negative_pooled_prompt_embeds)
        # Diffusers' tests and tools read the names of this method's first `return` to map its outputs
        # onto `__call__` keywords, so Diffusers' form returns first, with those names.
        if guided is None:
            move = (lambda t: t.to(device) if t is not None and device is not None else t)
            prompt_embeds, negative_prompt_embeds = move(cond.prompt_embeds), move(cond.negative_prompt_embeds)
            pooled_prompt_embeds = move(cond.added["text_embeds"])
            negative_pooled_prompt_embeds = move(cond.negative_added.get("text_embeds") if cond.negative_added else None)
            return prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds
        return cond

    def encode_conditioning(  # type: ignore[override]
        self,
        prompt: Prompt | None,
        num_images_per_prompt: int = 1,
        guided: bool = True,
        negative_prompt: Prompt | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        clip_skip: int | None = None,
        prompt_2: Prompt | None = None,
        negative_prompt_2: Prompt | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
    ) -> Conditioning:
        """Text states (B·n, L, 2048-ish) and pooled embeds (B·n, P) for prompt and negative.

        An absent negative prompt gives all-zero negative embeddings when the checkpoint sets
        `force_zeros_for_empty_prompt` (SDXL base does).
        """
        _check_prompt_args(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds)
        if prompt_embeds is None:
            prompts = as_prompt_list(prompt)
            prompt_embeds, pooled_prompt_embeds = self._encode_texts(
                [prompts, as_prompt_list(prompt_2 or prompts)], clip_skip
            )
        elif pooled_prompt_embeds is None:
            raise ValueError("with prompt_embeds, SDXL also needs pooled_prompt_embeds")
        cond = self._conditioning(prompt_embeds, pooled_prompt_embeds, num_images_per_prompt)
        if not guided:
            return cond
        negative, negative_pooled = self._negative_embeds(
            prompt_embeds, pooled_prompt_embeds, negative_prompt, negative_prompt_2,
            negative_prompt_embeds, negative_pooled_prompt_embeds,
        )
        uncond = self._conditioning(negative, negative_pooled, num_images_per_prompt)
        return cond.with_(negative_prompt_embeds=uncond.prompt_embeds, negative_added=uncond.added)

    def _negative_embeds(self, prompt_embeds, pooled, negative_prompt, negative_prompt_2,
                         negative_embeds, negative_pooled) -> tuple[torch.Tensor, torch.Tensor]:
        if negative_embeds is not None:
            if negative_pooled is None:
                raise ValueError("with negative_prompt_embeds, SDXL also needs negative_pooled_prompt_embeds")
            return negative_embeds, negative_pooled
        if negative_prompt is None and self.config.get("force_zeros_for_empty_prompt", True):
            return torch.zeros_like(prompt_embeds), torch.zeros_like(pooled)
        batch = prompt_embeds.shape[0]
        first = negative_prompts(negative_prompt, batch)
        second = negative_prompts(negative_prompt_2, batch) if negative_prompt_2 is not None else first
        # Negative states always come from the penultimate layer (clip_skip applies to the prompt only).
        return self._encode_texts([first, second], None, max_length=prompt_embeds.shape[1])

    def _conditioning(self, states: torch.Tensor, pooled: torch.Tensor, n: int) -> Conditioning:
        device, dtype = self.device, self._embeds_dtype()
        return Conditioning(
            repeat_per_image(states.to(device, dtype), n),
            added={"text_embeds": repeat_per_image(pooled.to(device, dtype), n)},
        )

    def add_time_ids(self, cond: Conditioning, original_size: Size, crops_coords_top_left: Size,
                     target_size: Size, negative: tuple[Size, Size, Size] | None = None) -> Conditioning:
        """Attach SDXL micro-conditioning ids (B, 6) = original (h, w) + crop (top, left) + target (h, w)."""
        expected = self.unet.add_embedding.linear_1.in_features
        pooled_dim = cond.added["text_embeds"].shape[-1]
        given = self.unet.config.addition_time_embed_dim * 6 + pooled_dim
        if given != expected:
            raise ValueError(
                f"the UNet expects {expected} added-embedding inputs but time ids and pooled embeds give {given}; "
                "check the text_encoder_2 projection_dim and the unet's addition_time_embed_dim"
            )
        dtype, device, batch = cond.prompt_embeds.dtype, self.device, cond.batch_size
        ids = torch.tensor([list(original_size) + list(crops_coords_top_left) + list(target_size)], dtype=dtype)
        added = {**cond.added, "time_ids": ids.to(device).repeat(batch, 1)}
        if not cond.guided:
            return cond.with_(added=added)
        neg_ids = ids if negative is None else torch.tensor([[*negative[0], *negative[1], *negative[2]]], dtype=dtype)
        negative_added = {**cond.negative_added, "time_ids": neg_ids.to(device).repeat(batch, 1)}
        return cond.with_(added=added, negative_added=negative_added)

    @property
    def upcasts_vae(self) -> bool:
        """Whether a decode moves the shared VAE to float32 and back (a float16 VAE marked
        `force_upcast`: its fp16 overflows): such decodes run one at a time, never batched."""
        vae = self.vae
        return vae is not None and vae.dtype == torch.float16 and bool(vae.config.get("force_upcast", False))

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """As SD, but a VAE that `upcasts_vae` decodes in float32."""
        vae = self.vae
        if not self.upcasts_vae:
            return super().decode_latents(latents)
        logger.debug("decoding in float32: the fp16 SDXL VAE overflows (force_upcast)")
        with self._vae_upcast_lock:
            vae.to(dtype=torch.float32)
            try:
                return super().decode_latents(latents.float())
            finally:
                vae.to(dtype=torch.float16)

    @scaled_by("cross_attention_kwargs")  # LoRA scale
    @torch.no_grad()
    def __call__(
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        denoising_end: float | None = None,
        guidance_scale: float = 5.0,
        negative_prompt: Prompt | None = None,
        negative_prompt_2: Prompt | None = None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        guidance_rescale: float = 0.0,
        original_size: Size | None = None,
        crops_coords_top_left: Size = (0, 0),
        target_size: Size | None = None,
        negative_original_size: Size | None = None,
        negative_crops_coords_top_left: Size = (0, 0),
        negative_target_size: Size | None = None,
        clip_skip: int | None = None,
        callback_on_step_end: StepCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> ImagePipelineOutput | tuple[Any, None]:
        """Generate images from text with SDXL; arguments and defaults as in Diffusers."""
        height, width = self.default_size(height, width)
        cond = self._start_call(
            output_type, callback_on_step_end_tensor_inputs, guidance_scale, prompt, num_images_per_prompt,
            negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip, prompt_2, negative_prompt_2,
            pooled_prompt_embeds, negative_pooled_prompt_embeds,
        )
        negative = None
        if negative_original_size is not None and negative_target_size is not None:
            negative = (negative_original_size, negative_crops_coords_top_left, negative_target_size)
        cond = self.add_time_ids(cond, original_size or (height, width), crops_coords_top_left,
                                 target_size or (height, width), negative)
        scheduler = self.new_scheduler(num_inference_steps, timesteps, sigmas)
        scheduler.set_begin_index(0)
        latents = self.prepare_latents(scheduler, cond.batch_size, height, width, generator, latents,
                                       cond.prompt_embeds.dtype)
        sampling = Sampling(guidance_scale, guidance_rescale, generator, eta, callback_on_step_end,
                            callback_on_step_end_tensor_inputs)
        latents = self.denoise(latents, scheduler, steps_before_end(scheduler, denoising_end), cond, sampling)
        return self.finish(latents, output_type, return_dict)


def steps_before_end(scheduler: Any, denoising_end: float | None) -> torch.Tensor:
    """The scheduler's timesteps a base model runs when a refiner takes over at `denoising_end`.

    SDXL's ensemble of expert denoisers (Podell et al. 2023, §2.5): with 0 < f < 1 the base stops at
    the cut-off t_c = round(T − f·T) of the T training steps and keeps the steps t ≥ t_c (both of a
    second-order pair); a refiner called with `denoising_start=f` runs the rest. None: every step.
    """
    timesteps = scheduler.timesteps
    if denoising_end is None or not 0 < denoising_end < 1:
        return timesteps
    total = scheduler.config.num_train_timesteps
    cutoff = int(round(total - denoising_end * total))
    return timesteps[: int((timesteps >= cutoff).sum())]
