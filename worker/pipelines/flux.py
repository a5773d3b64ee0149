"""FLUX.1 text-to-image (Black Forest Labs 2024): a rectified-flow transformer over 2×2-packed latent
tokens, conditioned on T5 token states, a CLIP pooled embedding and (FLUX.1-dev) an embedded
guidance scale. Real classifier-free guidance runs only with `true_cfg_scale > 1` and a negative prompt.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from worker.lora import lora_scale as text_lora_scale
from worker.lora import scaled_by
from worker.pipelines.conditioning import Conditioning
from worker.pipelines.flow import (
    dynamic_shift_mu,
    flux_default_sigmas,
    latent_image_ids,
    new_flow_scheduler,
    pack_latents,
    packed_latent_size,
    text_ids as flux_text_ids,
    unpack_latents,
)
from worker.pipelines.flow_pipeline import POOLED, FlowMatchPipeline, FlowSampling, prompt_batches
from worker.pipelines.guidance import GuidanceValue, classifier_free_guidance
from worker.pipelines.images import check_output_type
from worker.pipelines.output import ImagePipelineOutput
from worker.pipelines.prompts import Prompt, repeat_per_image
from worker.pipelines.prompts_t5 import encode_clip_pooled, encode_t5
from worker.pipelines.stable_diffusion import Generator, StepCallback
from worker.schedulers import randn_tensor


class FluxPipeline(FlowMatchPipeline):
    """FLUX.1 text-to-image: CLIP-L (pooled) + T5 (tokens), `FluxTransformer2DModel`, 16-channel VAE."""

    optional_components = ("image_encoder", "feature_extractor")

    def __init__(
        self,
        scheduler: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        text_encoder_2: Any,
        tokenizer_2: Any,
        transformer: Any,
        image_encoder: Any = None,
        feature_extractor: Any = None,
    ) -> None:
        self.register_components(
            scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
            image_encoder=image_encoder, feature_extractor=feature_extractor,
        )

    # ------------------------------------------------------------------ sizes
    def default_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        default = self.default_sample_size * self.vae_scale_factor
        return height or default, width or default

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        return packed_latent_size(height, width, self.vae_scale_factor)

    # ------------------------------------------------------------------ stage: prompts
    def _encode_texts(self, clip_texts: list[str], t5_texts: list[str], max_sequence_length: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(T5 states (N, L, D), CLIP pooled (N, P)) on the execution device in the transformer's dtype."""
        pooled = encode_clip_pooled(self.text_encoder, self.tokenizer, clip_texts)
        states = encode_t5(self.text_encoder_2, self.tokenizer_2, t5_texts, max_sequence_length)
        device, dtype = self.execution_device, self.embeds_dtype
        return states.to(device, dtype), pooled.to(device, dtype)

    def encode_prompt(
        self,
        prompt: Prompt | None,
        prompt_2: Prompt | None = None,
        device: torch.device | str | None = None,
        num_images_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int = 512,
        lora_scale: float | None = None,
        *,
        guided: bool | None = None,
        **negatives: Any,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | Conditioning:
        """Diffusers' signature: `(prompt_embeds, pooled_prompt_embeds, text_ids)`, B·n rows of T5
        states and pooled CLIP, and the text tokens' RoPE positions (L, 3).

        With Kiln's keyword `guided=` (and the `negative_*` keywords), returns a `Conditioning`
        (see `encode_conditioning`).
        """
        with text_lora_scale(lora_scale):
            cond = self.encode_conditioning(prompt, prompt_2, num_images_per_prompt, prompt_embeds,
                                            pooled_prompt_embeds, max_sequence_length, guided=bool(guided),
                                            **negatives)
        # Diffusers' tools read the names of this method's first `return` (see SD3's encode_prompt).
        if guided is None:
            prompt_embeds, pooled_prompt_embeds = cond.prompt_embeds, cond.added[POOLED]
            if device is not None:
                prompt_embeds, pooled_prompt_embeds = prompt_embeds.to(device), pooled_prompt_embeds.to(device)
            text_ids = flux_text_ids(prompt_embeds.shape[1], prompt_embeds.device, prompt_embeds.dtype)
            return prompt_embeds, pooled_prompt_embeds, text_ids
        return cond

    def encode_conditioning(
        self,
        prompt: Prompt | None,
        prompt_2: Prompt | None = None,
        num_images_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int = 512,
        negative_prompt: Prompt | None = None,
        negative_prompt_2: Prompt | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        guided: bool = False,
    ) -> Conditioning:
        """Text states for B prompts, repeated to B·n rows; the negative branch only when `guided`."""
        batch = self.batch_size_of(prompt, prompt_embeds)
        prompts, t5_prompts, negatives, t5_negatives = prompt_batches(
            prompt, prompt_2, negative_prompt, negative_prompt_2, batch)
        if prompt_embeds is None:
            prompt_embeds, pooled_prompt_embeds = self._encode_texts(prompts, t5_prompts, max_sequence_length)
        elif pooled_prompt_embeds is None:
            raise ValueError("prompt_embeds need pooled_prompt_embeds from the same text encoders")
        cond = self._rows(prompt_embeds, pooled_prompt_embeds, num_images_per_prompt)
        if not guided:
            return cond
        if negative_prompt_embeds is None:
            negative_prompt_embeds, negative_pooled_prompt_embeds = self._encode_texts(
                negatives, t5_negatives, max_sequence_length)
        elif negative_pooled_prompt_embeds is None:
            raise ValueError("negative_prompt_embeds need negative_pooled_prompt_embeds")
        negative = self._rows(negative_prompt_embeds, negative_pooled_prompt_embeds, num_images_per_prompt)
        return cond.with_(negative_prompt_embeds=negative.prompt_embeds, negative_added=negative.added)

    def _rows(self, states: torch.Tensor, pooled: torch.Tensor, n: int) -> Conditioning:
        device, dtype = self.execution_device, self.embeds_dtype
        return Conditioning(repeat_per_image(states.to(device, dtype), n),
                            added={POOLED: repeat_per_image(pooled.to(device, dtype), n)})

    # ------------------------------------------------------------------ stage: schedule and noise
    def new_scheduler(self, num_inference_steps: int, image_seq_len: int,
                      sigmas: Sequence[float] | None = None) -> Any:
        """A fresh scheduler over FLUX's σ grid (1 … 1/n unless given), shifted by μ(image tokens)."""
        sigmas = flux_default_sigmas(num_inference_steps) if sigmas is None else sigmas
        mu = dynamic_shift_mu(image_seq_len, self.scheduler.config)
        return new_flow_scheduler(self.scheduler, num_inference_steps, self.execution_device, sigmas, mu)

    def planned_steps(self, num_inference_steps: int = 28, sigmas: list[float] | None = None,
                      height: int | None = None, width: int | None = None, **call_args: Any) -> int:
        """Denoising steps (model calls, one callback each) a call with these arguments makes."""
        return len(self.new_scheduler(num_inference_steps, self.image_tokens(height, width), sigmas).timesteps)

    def image_tokens(self, height: int | None, width: int | None) -> int:
        """Packed latent tokens of an image: (h/2) · (w/2) at the latent size."""
        h, w = self.latent_size(*self.default_size(height, width))
        return (h // 2) * (w // 2)

    def prepare_latents(self, batch_size: int, height: int, width: int, generator: Generator = None,
                        latents: torch.Tensor | None = None) -> torch.Tensor:
        """Packed x_1 = ε ~ N(0, I): (B, h/2 · w/2, 4C) (given `latents` are taken as packed)."""
        device, dtype = self.execution_device, self.embeds_dtype
        if latents is not None:
            return latents.to(device, dtype)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for {batch_size} images; pass one per image")
        h, w = self.latent_size(height, width)
        noise = randn_tensor((batch_size, self.latent_channels, h, w), generator, device, dtype)
        return pack_latents(noise)

    def sampling(self, latents: torch.Tensor, cond: Conditioning, height: int, width: int, guidance_scale: float,
                 true_cfg_scale: GuidanceValue, generator: Generator, joint_attention_kwargs: dict | None,
                 callback: StepCallback | None, callback_inputs: Sequence[str]) -> FlowSampling:
        """The loop's settings: position ids of this shape, embedded guidance if the model has it."""
        device, dtype = self.execution_device, self.embeds_dtype
        h, w = self.latent_size(height, width)
        guidance = None
        if self.transformer.config.get("guidance_embeds"):
            guidance = torch.full([latents.shape[0]], float(guidance_scale), device=device, dtype=torch.float32)
        model_kwargs = {
            "txt_ids": flux_text_ids(cond.prompt_embeds.shape[1], device, dtype),
            "img_ids": latent_image_ids(h, w, device, dtype),
            "joint_attention_kwargs": joint_attention_kwargs,
        }
        return FlowSampling(true_cfg_scale, guidance, generator, callback, callback_inputs, model_kwargs)

    # ------------------------------------------------------------------ stage: one model call
    def denoise_step(self, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
                     sampling: FlowSampling, step: int = 0, steps: int = 1) -> torch.Tensor:
        """Velocity for packed latents (B, S, 4C) at σ = t/1000; with a negative branch the rows run as
        [negatives; positives] in one call and combine as v(∅) + w·(v(c) − v(∅))."""
        states, added, _, copies = cond.model_inputs()
        batch = latents.shape[0]
        t = torch.as_tensor(timestep, device=latents.device)
        t = (t.expand(batch) if t.ndim == 0 else t).to(latents.dtype)
        guidance = sampling.guidance
        output = self.transformer(
            hidden_states=torch.cat([latents] * copies),
            timestep=torch.cat([t] * copies) / 1000,
            guidance=None if guidance is None else torch.cat([guidance] * copies),
            pooled_projections=added[POOLED],
            encoder_hidden_states=states,
            txt_ids=sampling.model_kwargs["txt_ids"],
            img_ids=sampling.model_kwargs["img_ids"],
            joint_attention_kwargs=sampling.model_kwargs.get("joint_attention_kwargs"),
            return_dict=False,
        )[0]
        if copies == 1:
            return output
        uncond, text = output.chunk(2)
        return classifier_free_guidance(uncond, text, sampling.cfg_scale)

    def unpacker(self, height: int, width: int):
        """Packed tokens -> spatial latents for this image size (what `finish` decodes)."""
        h, w = self.latent_size(height, width)
        return lambda tokens: unpack_latents(tokens, h, w)

    def _start_call(self, output_type: str, callback_inputs: Sequence[str], true_cfg_scale: float,
                    negative_given: bool, **encode_kwargs: Any) -> Conditioning:
        """Check the output type and callback names, then encode (negatives only for true CFG)."""
        check_output_type(output_type)
        self.check_callback_inputs(callback_inputs)
        guided = true_cfg_scale > 1 and negative_given
        return self.encode_conditioning(**encode_kwargs, guided=guided)

    # ------------------------------------------------------------------ text-to-image
    @scaled_by("joint_attention_kwargs")  # LoRA scale
    @torch.no_grad()
    def __call__(
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        negative_prompt: Prompt | None = None,
        negative_prompt_2: Prompt | None = None,
        true_cfg_scale: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 28,
        sigmas: list[float] | None = None,
        guidance_scale: float = 3.5,
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
        """Generate images from text; arguments and defaults as in Diffusers' `FluxPipeline`."""
        height, width = self.default_size(height, width)
        cond = self._start_call(
            output_type, callback_on_step_end_tensor_inputs, true_cfg_scale,
            negative_prompt is not None or negative_prompt_embeds is not None,
            prompt=prompt, prompt_2=prompt_2, num_images_per_prompt=num_images_per_prompt,
            prompt_embeds=prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            max_sequence_length=max_sequence_length, negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2, negative_prompt_embeds=negative_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds,
        )
        latents = self.prepare_latents(cond.batch_size, height, width, generator, latents)
        scheduler = self.new_scheduler(num_inference_steps, latents.shape[1], sigmas)
        sampling = self.sampling(latents, cond, height, width, guidance_scale, true_cfg_scale, generator,
                                 joint_attention_kwargs, callback_on_step_end, callback_on_step_end_tensor_inputs)
        latents = self.denoise(latents, scheduler, scheduler.timesteps, cond, sampling)
        return self.finish(latents, output_type, return_dict, self.unpacker(height, width))
