"""Stable Diffusion 3 / 3.5 text-to-image (Esser et al. 2024, "Scaling Rectified Flow Transformers for
High-Resolution Image Synthesis"): an MMDiT over patchified latents, conditioned on CLIP-L and CLIP-G
penultimate states (side by side, zero-padded to T5's width) followed by T5 states, and on both CLIPs'
pooled embeddings; classifier-free guidance as in SD.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from worker.lora import lora_scale as text_lora_scale
from worker.lora import scaled_by
from worker.pipelines.conditioning import Conditioning
from worker.pipelines.flow import dynamic_shift_mu, new_flow_scheduler
from worker.pipelines.flow_pipeline import POOLED, FlowMatchPipeline, FlowSampling, prompt_batches
from worker.pipelines.guidance import GuidanceValue, classifier_free_guidance
from worker.pipelines.images import check_output_type
from worker.pipelines.output import ImagePipelineOutput
from worker.pipelines.prompts import Prompt, as_prompt_list, encode_penultimate, repeat_per_image
from worker.pipelines.prompts_t5 import check_sequence_length, encode_t5
from worker.pipelines.stable_diffusion import Generator, StepCallback
from worker.schedulers import randn_tensor

SD3_MAX_SHIFT = 1.16  # default `max_shift` of SD3's dynamic shifting (SD3.5-style configs)


class StableDiffusion3Pipeline(FlowMatchPipeline):
    """SD3 text-to-image: CLIP-L + CLIP-G (`CLIPTextModelWithProjection`) + optional T5, `SD3Transformer2DModel`."""

    optional_components = ("text_encoder_3", "tokenizer_3", "image_encoder", "feature_extractor")
    callback_tensor_inputs = ("latents", "prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds",
                              "negative_pooled_prompt_embeds")

    def __init__(
        self,
        transformer: Any,
        scheduler: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        text_encoder_2: Any,
        tokenizer_2: Any,
        text_encoder_3: Any = None,
        tokenizer_3: Any = None,
        image_encoder: Any = None,
        feature_extractor: Any = None,
    ) -> None:
        self.register_components(
            transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3, image_encoder=image_encoder, feature_extractor=feature_extractor,
        )

    # ------------------------------------------------------------------ sizes
    @property
    def patch_size(self) -> int:
        return self.transformer.config.get("patch_size", 2)

    def default_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """(H, W), defaulting to the transformer's sample size in pixels; multiples of f · patch."""
        default = self.transformer.config.get("sample_size", self.default_sample_size) * self.vae_scale_factor
        height, width = height or default, width or default
        multiple = self.vae_scale_factor * self.patch_size
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be multiples of {multiple}, got {height}x{width}")
        return height, width

    def guided(self, guidance_scale: GuidanceValue) -> bool:
        return bool((torch.as_tensor(guidance_scale) > 1).any())

    # ------------------------------------------------------------------ stage: prompts
    def _t5_states(self, texts: list[str], max_sequence_length: int) -> torch.Tensor:
        """T5 states (N, L, D); zeros of the transformer's `joint_attention_dim` without a T5 encoder."""
        if self.text_encoder_3 is None:
            check_sequence_length(max_sequence_length)
            dim = self.transformer.config.joint_attention_dim
            return torch.zeros(len(texts), max_sequence_length, dim, device=self.execution_device,
                               dtype=self.embeds_dtype)
        return encode_t5(self.text_encoder_3, self.tokenizer_3, texts, max_sequence_length)

    def encode_texts(self, texts: tuple[list[str], list[str], list[str]], max_sequence_length: int,
                     clip_skip: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (N, 77 + L, D_T5), pooled (N, P_L + P_G)) for the three encoders' prompts."""
        device, dtype = self.execution_device, self.embeds_dtype
        l_states, l_pooled = encode_penultimate(self.text_encoder, self.tokenizer, texts[0], clip_skip)
        g_states, g_pooled = encode_penultimate(self.text_encoder_2, self.tokenizer_2, texts[1], clip_skip)
        t5 = self._t5_states(texts[2], max_sequence_length).to(device, dtype)
        clip = torch.cat([l_states.to(device, dtype), g_states.to(device, dtype)], dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))  # (N, 77, D_T5)
        pooled = torch.cat([l_pooled.to(device, dtype), g_pooled.to(device, dtype)], dim=-1)
        return torch.cat([clip, t5], dim=-2), pooled

    def encode_prompt(
        self,
        prompt: Prompt | None,
        prompt_2: Prompt | None = None,
        prompt_3: Prompt | None = None,
        device: torch.device | str | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: Prompt | None = None,
        negative_prompt_2: Prompt | None = None,
        negative_prompt_3: Prompt | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        clip_skip: int | None = None,
        max_sequence_length: int = 256,
        lora_scale: float | None = None,
        *,
        guided: bool | None = None,
    ) -> tuple[torch.Tensor | None, ...] | Conditioning:
        """Diffusers' signature: `(prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
        negative_pooled_prompt_embeds)`, B·n rows each (negatives None without guidance).

        With Kiln's keyword `guided=`, returns a `Conditioning` (see `encode_conditioning`).
        """
        with text_lora_scale(lora_scale):
            cond = self.encode_conditioning(
                prompt, prompt_2, prompt_3, num_images_per_prompt,
                do_classifier_free_guidance if guided is None else guided, negative_prompt, negative_prompt_2,
                negative_prompt_3, prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds,
                negative_pooled_prompt_embeds, clip_skip, max_sequence_length)
        # Diffusers' tools read the names of this method's first `return` to map its outputs onto
        # `__call__` keywords, so Diffusers' form returns first, with those names.
        if guided is None:
            move = (lambda t: t.to(device) if t is not None and device is not None else t)
            prompt_embeds, negative_prompt_embeds = move(cond.prompt_embeds), move(cond.negative_prompt_embeds)
            pooled_prompt_embeds = move(cond.added[POOLED])
            negative_pooled_prompt_embeds = move(cond.negative_added.get(POOLED))
            return prompt_embeds, negative_prompt_embeds, pooled_prompt_embeds, negative_pooled_prompt_embeds
        return cond

    def encode_conditioning(
        self,
        prompt: Prompt | None,
        prompt_2: Prompt | None = None,
        prompt_3: Prompt | None = None,
        num_images_per_prompt: int = 1,
        guided: bool = True,
        negative_prompt: Prompt | None = None,
        negative_prompt_2: Prompt | None = None,
        negative_prompt_3: Prompt | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        clip_skip: int | None = None,
        max_sequence_length: int = 256,
    ) -> Conditioning:
        """Text states for B prompts, repeated to B·n rows; negatives ("" by default) when `guided`.

        `clip_skip` applies to the prompt, not to the negative prompt (as in Diffusers).
        """
        batch = self.batch_size_of(prompt, prompt_embeds)
        prompts, seconds, negatives, negative_seconds = prompt_batches(
            prompt, prompt_2, negative_prompt, negative_prompt_2, batch)
        if prompt_embeds is None:
            thirds = as_prompt_list(prompt_3 or prompt)
            prompt_embeds, pooled_prompt_embeds = self.encode_texts((prompts, seconds, thirds), max_sequence_length,
                                                                    clip_skip)
        elif pooled_prompt_embeds is None:
            raise ValueError("prompt_embeds need pooled_prompt_embeds from the same text encoders")
        cond = self._rows(prompt_embeds, pooled_prompt_embeds, num_images_per_prompt)
        if not guided:
            return cond
        if negative_prompt_embeds is None:
            negative_thirds = prompt_batches(None, None, negative_prompt_3 or negative_prompt, None, batch)[2]
            negative_prompt_embeds, negative_pooled_prompt_embeds = self.encode_texts(
                (negatives, negative_seconds, negative_thirds), max_sequence_length)
        elif negative_pooled_prompt_embeds is None:
            raise ValueError("negative_prompt_embeds need negative_pooled_prompt_embeds")
        negative = self._rows(negative_prompt_embeds, negative_pooled_prompt_embeds, num_images_per_prompt)
        return cond.with_(negative_prompt_embeds=negative.prompt_embeds, negative_added=negative.added)

    def _rows(self, states: torch.Tensor, pooled: torch.Tensor, n: int) -> Conditioning:
        device, dtype = self.execution_device, self.embeds_dtype
        return Conditioning(repeat_per_image(states.to(device, dtype), n),
                            added={POOLED: repeat_per_image(pooled.to(device, dtype), n)})

    # ------------------------------------------------------------------ stage: schedule and noise
    def new_scheduler(self, num_inference_steps: int, image_seq_len: int, sigmas: Sequence[float] | None = None,
                      mu: float | None = None) -> Any:
        """A fresh scheduler; μ from the patch count when the scheduler shifts dynamically (unless given)."""
        if mu is None and self.scheduler.config.get("use_dynamic_shifting"):
            mu = dynamic_shift_mu(image_seq_len, self.scheduler.config, SD3_MAX_SHIFT)
        return new_flow_scheduler(self.scheduler, num_inference_steps, self.execution_device, sigmas, mu)

    def planned_steps(self, num_inference_steps: int = 28, sigmas: list[float] | None = None,
                      height: int | None = None, width: int | None = None, mu: float | None = None,
                      **call_args: Any) -> int:
        """Denoising steps (model calls, one callback each) a call with these arguments makes."""
        height, width = self.default_size(height, width)
        return len(self.new_scheduler(num_inference_steps, self.image_seq_len(height, width), sigmas, mu).timesteps)

    def image_seq_len(self, height: int, width: int) -> int:
        """Transformer tokens of an image: (H/f/p) · (W/f/p)."""
        f, p = self.vae_scale_factor, self.patch_size
        return (height // f // p) * (width // f // p)

    def prepare_latents(self, batch_size: int, height: int, width: int, generator: Generator = None,
                        latents: torch.Tensor | None = None) -> torch.Tensor:
        """x_1 = ε ~ N(0, I) of shape (B, C, H/f, W/f) (or the given latents)."""
        device, dtype = self.execution_device, self.embeds_dtype
        if latents is not None:
            return latents.to(device, dtype)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for {batch_size} images; pass one per image")
        f = self.vae_scale_factor
        return randn_tensor((batch_size, self.latent_channels, height // f, width // f), generator, device, dtype)

    # ------------------------------------------------------------------ stage: one model call
    def denoise_step(self, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
                     sampling: FlowSampling, step: int = 0, steps: int = 1) -> torch.Tensor:
        """Guided velocity for latents (B, C, h, w): one call over [negatives; positives], plus the
        skip-layer call of SD3.5's skip-layer guidance while `step` is inside its window."""
        states, added, _, copies = cond.model_inputs()
        batch = latents.shape[0]
        t = torch.as_tensor(timestep, device=latents.device)
        t = t.expand(batch) if t.ndim == 0 else t
        output = self.transformer(
            hidden_states=torch.cat([latents] * copies), timestep=torch.cat([t] * copies),
            encoder_hidden_states=states, pooled_projections=added[POOLED],
            joint_attention_kwargs=sampling.model_kwargs.get("joint_attention_kwargs"), return_dict=False,
        )[0]
        if copies == 1:
            return output
        uncond, text = output.chunk(2)
        guided = classifier_free_guidance(uncond, text, sampling.cfg_scale)
        if sampling.skip_layers is not None and _in_window(sampling.skip_layers, step, steps):
            skipped = self.transformer(
                hidden_states=latents, timestep=t, encoder_hidden_states=cond.prompt_embeds,
                pooled_projections=cond.added[POOLED],
                joint_attention_kwargs=sampling.model_kwargs.get("joint_attention_kwargs"), return_dict=False,
                skip_layers=list(sampling.skip_layers[0]),
            )[0]
            guided = guided + (text - skipped) * sampling.skip_layers[1]
        return guided

    def _start_call(self, output_type: str, callback_inputs: Sequence[str], guidance_scale: GuidanceValue,
                    **encode_kwargs: Any) -> Conditioning:
        check_output_type(output_type)
        self.check_callback_inputs(callback_inputs)
        return self.encode_conditioning(**encode_kwargs, guided=self.guided(guidance_scale))

    # ------------------------------------------------------------------ text-to-image
    @scaled_by("joint_attention_kwargs")  # LoRA scale
    @torch.no_grad()
    def __call__(
        self,
        prompt: Prompt | None = None,
        prompt_2: Prompt | None = None,
        prompt_3: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 28,
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
        skip_guidance_layers: list[int] | None = None,
        skip_layer_guidance_scale: float = 2.8,
        skip_layer_guidance_stop: float = 0.2,
        skip_layer_guidance_start: float = 0.01,
        mu: float | None = None,
    ) -> ImagePipelineOutput | tuple[Any]:
        """Generate images from text; arguments and defaults as in Diffusers' `StableDiffusion3Pipeline`."""
        height, width = self.default_size(height, width)
        cond = self._start_call(
            output_type, callback_on_step_end_tensor_inputs, guidance_scale, prompt=prompt, prompt_2=prompt_2,
            prompt_3=prompt_3, num_images_per_prompt=num_images_per_prompt, negative_prompt=negative_prompt,
            negative_prompt_2=negative_prompt_2, negative_prompt_3=negative_prompt_3, prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds, pooled_prompt_embeds=pooled_prompt_embeds,
            negative_pooled_prompt_embeds=negative_pooled_prompt_embeds, clip_skip=clip_skip,
            max_sequence_length=max_sequence_length,
        )
        latents = self.prepare_latents(cond.batch_size, height, width, generator, latents)
        scheduler = self.new_scheduler(num_inference_steps, self.image_seq_len(height, width), sigmas, mu)
        skip = None
        if skip_guidance_layers is not None:
            skip = (skip_guidance_layers, skip_layer_guidance_scale, skip_layer_guidance_start,
                    skip_layer_guidance_stop)
        sampling = FlowSampling(guidance_scale, None, generator, callback_on_step_end,
                                callback_on_step_end_tensor_inputs,
                                {"joint_attention_kwargs": joint_attention_kwargs}, skip_layers=skip)
        steps = num_inference_steps if sigmas is None else len(scheduler.timesteps)
        latents = self.denoise(latents, scheduler, scheduler.timesteps, cond, sampling, steps)
        return self.finish(latents, output_type, return_dict)


def _in_window(skip_layers: tuple[Sequence[int], float, float, float], step: int, steps: int) -> bool:
    """Skip-layer guidance runs for steps strictly inside (start·n, stop·n)."""
    _, _, start, stop = skip_layers
    return steps * start < step < steps * stop
