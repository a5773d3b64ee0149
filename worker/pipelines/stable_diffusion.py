"""Stable Diffusion text-to-image (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models"), written as short stages that `__call__` runs in order:

    encode_prompt -> Conditioning        (text states, per sample)
    new_scheduler -> fresh scheduler     (one per job; the pipeline's own is never stepped)
    prepare_latents -> x_T
    per step: scheduler.scale_model_input -> denoise_step (batched, per-sample t and guidance)
              -> scheduler.step
    decode_latents -> images in [-1, 1] -> images.postprocess

No stage stores per-call state on the pipeline, so one loaded pipeline serves concurrent jobs.
The serving worker runs each job's whole `__call__` in the job's own thread, over a view of the
pipeline whose UNet is a stand-in (`worker.batching.BatchedModule`): the step batcher never
drives these stages, it only gathers the `denoise_step` model calls of concurrent jobs into one.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from worker.pipelines.conditioning import Conditioning
from worker.pipelines.diffusers_logs import pipeline_logger
from worker.pipelines.guidance import (
    GuidanceValue,
    any_positive,
    classifier_free_guidance,
    guidance_scale_embedding,
    rescale_guidance,
)
from worker.pipelines.images import check_output_type, postprocess
from worker.pipelines.output import ImagePipelineOutput
from worker.lora import LoraLoaderMixin, scaled_by
from worker.lora import lora_scale as text_lora_scale
from worker.pipelines.pipeline_utils import DiffusionPipeline
from worker.pipelines.prompts import Prompt, as_prompt_list, encode_sd, negative_prompts, repeat_per_image
from worker.schedulers import randn_tensor

logger = logging.getLogger(__name__)

Generator = torch.Generator | list[torch.Generator] | None
StepCallback = Callable[[Any, int, Any, dict[str, torch.Tensor]], dict[str, torch.Tensor]]

# Old SD scheduler configs are rewritten on load: key -> (needs fixing?, fixed value).
SD_SCHEDULER_FIXES: dict[str, tuple[Callable[[Any], bool], Any]] = {
    "steps_offset": (lambda v: v != 1, 1),
    "clip_sample": (lambda v: v is True, False),
}


_REPORTED_FIXES: set[tuple] = set()


def modernize_scheduler(scheduler: Any, fixes: dict[str, tuple[Callable[[Any], bool], Any]]) -> Any:
    """Rebuild `scheduler` with outdated config values fixed; return it unchanged if none are."""
    if scheduler is None:
        return None
    config = scheduler.config
    changes = {k: value for k, (outdated, value) in fixes.items() if k in config and outdated(config[k])}
    if not changes:
        return scheduler
    note = (type(scheduler).__name__, tuple(sorted(changes.items())))
    level = logging.DEBUG if note in _REPORTED_FIXES else logging.WARNING  # once per process, not per job
    _REPORTED_FIXES.add(note)
    logger.log(level, "scheduler config is outdated; using %s (as Diffusers does)", changes)
    return type(scheduler).from_config(scheduler, **changes)


def scheduler_step_kwargs(scheduler: Any, generator: Generator, eta: float) -> dict[str, Any]:
    """`eta` and `generator` for schedulers whose `step` takes them (DDIM, ancestral samplers)."""
    accepted = inspect.signature(scheduler.step).parameters
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs


# Callback tensor name (Diffusers') -> where it lives in a `Conditioning`: (field, key in that dict or None).
CALLBACK_TENSORS: dict[str, tuple[str, str | None]] = {
    "prompt_embeds": ("prompt_embeds", None),
    "negative_prompt_embeds": ("negative_prompt_embeds", None),
    "add_text_embeds": ("added", "text_embeds"),
    "add_time_ids": ("added", "time_ids"),
    "negative_pooled_prompt_embeds": ("negative_added", "text_embeds"),
    "negative_add_time_ids": ("negative_added", "time_ids"),
}


@dataclass
class Sampling:
    """Per-call settings of the denoising loop (kept off the pipeline object)."""

    guidance_scale: GuidanceValue = 7.5
    guidance_rescale: GuidanceValue = 0.0
    generator: Generator = None
    eta: float = 0.0
    callback: StepCallback | None = None
    callback_inputs: Sequence[str] = ("latents",)
    # Optional per-step hook (step index, timesteps, latents) -> latents; inpainting blends here.
    after_step: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None


class StableDiffusionMixin:
    """Diffusers' switches on SD-family pipelines, and the state of the latest direct `__call__`.

    The serving worker drives the stages itself and reads none of this. `guidance_scale`,
    `num_timesteps` and `interrupt` describe the call in progress on this instance (callbacks
    read them, and set `_interrupt = True` to skip the remaining steps).
    """

    _guidance_scale: Any = 7.5
    _num_timesteps: int = 0
    _interrupt: bool = False
    _attention_slice_size: Any = None

    @property
    def guidance_scale(self) -> Any:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.guided(self._guidance_scale)

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def steps_bar(self, timesteps: Any) -> Any:
        """`timesteps`, wrapped in a progress bar only when `set_progress_bar_config` enabled one."""
        config = getattr(self, "_progress_bar_config", None)
        if config is None or config.get("disable", False):
            return timesteps
        return self.progress_bar(timesteps)

    # Attention slicing: Kiln attends with torch's fused SDPA kernel, which never materialises the
    # score matrix, so slicing would not save memory; the switch is recorded and results are unchanged.
    def enable_attention_slicing(self, slice_size: str | int | None = "auto") -> None:
        self._attention_slice_size = slice_size
        self.unet.set_attention_slice(slice_size)

    def disable_attention_slicing(self) -> None:
        self._attention_slice_size = None
        self.unet.set_attention_slice(None)

    # xFormers: Kiln's attention already runs on torch's memory-efficient SDPA kernels; accepted, no change.
    def enable_xformers_memory_efficient_attention(self, attention_op: Any = None) -> None:
        self._xformers_requested = True

    def disable_xformers_memory_efficient_attention(self) -> None:
        self._xformers_requested = False

    def enable_vae_slicing(self) -> None:
        """Decode the batch one image at a time (same images, less peak memory)."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        self.vae.disable_slicing()

    def enable_vae_tiling(self) -> None:
        """Encode/decode large images in overlapping, blended tiles (small seams possible)."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """FreeU (Si et al., 2023): backbone scales b1, b2 and skip scales s1, s2 of the first two up levels."""
        self.unet.enable_freeu(s1=s1, s2=s2, b1=b1, b2=b2)

    def disable_freeu(self) -> None:
        self.unet.disable_freeu()

    def fuse_qkv_projections(self, unet: bool = True, vae: bool = True) -> None:
        for model in [m for m, on in ((self.unet, unet), (self.vae, vae)) if on]:
            model.fuse_qkv_projections()

    def unfuse_qkv_projections(self, unet: bool = True, vae: bool = True) -> None:
        for model in [m for m, on in ((self.unet, unet), (self.vae, vae)) if on]:
            model.unfuse_qkv_projections()


class StableDiffusionPipeline(LoraLoaderMixin, StableDiffusionMixin, DiffusionPipeline):
    """Text-to-image with a VAE, a CLIP text encoder and a `UNet2DConditionModel`."""

    optional_components = ("safety_checker", "feature_extractor", "image_encoder")
    _optional_components = list(optional_components)
    option_names = ("requires_safety_checker",)
    scheduler_fixes = SD_SCHEDULER_FIXES
    callback_tensor_inputs = ("latents", "prompt_embeds", "negative_prompt_embeds")
    _callback_tensor_inputs = list(callback_tensor_inputs)
    default_guidance_scale = 7.5
    # Prompt truncation is reported on Diffusers' logger of the same pipeline (see `diffusers_logs`).
    prompt_log = pipeline_logger("stable_diffusion.pipeline_stable_diffusion")

    def __init__(
        self,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        unet: Any,
        scheduler: Any,
        safety_checker: Any = None,
        feature_extractor: Any = None,
        image_encoder: Any = None,
        requires_safety_checker: bool = False,
    ) -> None:
        if safety_checker is not None:
            logger.warning("Kiln ships no safety checker; the given one is kept but never run")
        self.register_components(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
            scheduler=modernize_scheduler(scheduler, self.scheduler_fixes), safety_checker=safety_checker,
            feature_extractor=feature_extractor, image_encoder=image_encoder,
        )
        self.register_options(requires_safety_checker=requires_safety_checker)

    # ------------------------------------------------------------------ sizes and switches
    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell: 2^(number of VAE blocks − 1) (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8

    def default_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """(H, W), defaulting to the UNet's sample size in pixels; both must be multiples of 8."""
        size = self.unet.config.sample_size
        default_h, default_w = (size, size) if isinstance(size, int) else tuple(size)
        height = height or default_h * self.vae_scale_factor
        width = width or default_w * self.vae_scale_factor
        if height % 8 or width % 8:
            raise ValueError(f"height and width must be multiples of 8, got {height}x{width}")
        return height, width

    def guided(self, guidance_scale: GuidanceValue) -> bool:
        """Classifier-free guidance runs when any scale > 1 and the UNet is not guidance-distilled."""
        distilled = self.unet.config.get("time_cond_proj_dim") is not None
        return not distilled and bool((torch.as_tensor(guidance_scale) > 1).any())

    def _embeds_dtype(self) -> torch.dtype:
        return (self.text_encoder or self.unet).dtype

    # ------------------------------------------------------------------ stage: prompts
    def encode_prompt(
        self,
        prompt: Prompt | None,
        device: torch.device | str | int | None = None,
        num_images_per_prompt: int = 1,
        do_classifier_free_guidance: bool = True,
        negative_prompt: Prompt | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        lora_scale: float | None = None,
        clip_skip: int | None = None,
        *,
        guided: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None] | Conditioning:
        """Diffusers' signature: `(prompt_embeds, negative_prompt_embeds)`, B·n rows each (the
        negative is None without guidance). `lora_scale` scales text-encoder LoRA adapters.

        Kiln's earlier form, `encode_prompt(prompt, n, guided, negative_prompt)` or with
        `guided=`, still returns a `Conditioning` (use `encode_conditioning` in new code).
        """
        # Diffusers' tests and tools read the names of this method's first `return` to map its outputs
        # onto `__call__` keywords, so Diffusers' form returns first, with those names.
        if guided is None and not _is_count(device):
            with text_lora_scale(lora_scale):
                cond = self.encode_conditioning(prompt, num_images_per_prompt, do_classifier_free_guidance,
                                                negative_prompt, prompt_embeds, negative_prompt_embeds, clip_skip)
            prompt_embeds, negative_prompt_embeds = cond.prompt_embeds, cond.negative_prompt_embeds
            if device is not None:
                prompt_embeds = prompt_embeds.to(device)
                negative_prompt_embeds = negative_prompt_embeds.to(device) if negative_prompt_embeds is not None else None
            return prompt_embeds, negative_prompt_embeds
        n, guided = (device, num_images_per_prompt) if _is_count(device) else (num_images_per_prompt, guided)
        negative = do_classifier_free_guidance if _is_count(device) else negative_prompt
        return self.encode_conditioning(prompt, n, bool(guided), negative if isinstance(negative, (str, list))
                                        else None, prompt_embeds, negative_prompt_embeds, clip_skip)

    def encode_conditioning(
        self,
        prompt: Prompt | None,
        num_images_per_prompt: int = 1,
        guided: bool = True,
        negative_prompt: Prompt | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        clip_skip: int | None = None,
    ) -> Conditioning:
        """Text states for B prompts, repeated to B·n rows; negatives too when `guided`."""
        _check_prompt_args(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds)
        device, dtype = self.device, self._embeds_dtype()
        if prompt_embeds is None:
            prompt_embeds = encode_sd(self.text_encoder, self.tokenizer, as_prompt_list(prompt), clip_skip,
                                      log=self.prompt_log)
        batch = prompt_embeds.shape[0]
        if guided and negative_prompt_embeds is None:
            texts = negative_prompts(negative_prompt, batch)
            negative_prompt_embeds = encode_sd(self.text_encoder, self.tokenizer, texts,
                                               max_length=prompt_embeds.shape[1], log=self.prompt_log)
        cond = repeat_per_image(prompt_embeds.to(device, dtype), num_images_per_prompt)
        if not guided:
            return Conditioning(cond)
        negative = repeat_per_image(negative_prompt_embeds.to(device, dtype), num_images_per_prompt)
        return Conditioning(cond, negative)

    def guidance_condition(self, cond: Conditioning, guidance_scale: GuidanceValue) -> Conditioning:
        """Add the guidance-scale embedding for guidance-distilled UNets (LCM); else unchanged."""
        dim = self.unet.config.get("time_cond_proj_dim")
        if dim is None:
            return cond
        scale = torch.as_tensor(guidance_scale, dtype=torch.float32).flatten()
        scale = scale.expand(cond.batch_size) if scale.numel() == 1 else scale
        embedding = guidance_scale_embedding(scale - 1, dim).to(self.device, cond.prompt_embeds.dtype)
        return cond.with_(timestep_cond=embedding)

    def _start_call(self, output_type: str, callback_inputs: Sequence[str], guidance_scale: GuidanceValue,
                    prompt: Prompt | None, num_images_per_prompt: int, *encode_args: Any) -> Conditioning:
        """What every `__call__` starts with: check the output type and callback tensor names, encode
        the prompt (negatives only when guided) and add the guidance embedding of distilled UNets.

        `encode_args` are `encode_conditioning`'s arguments after `guided`, in its order.
        """
        check_output_type(output_type)
        self.check_callback_inputs(callback_inputs)
        self._guidance_scale, self._interrupt = guidance_scale, False
        cond = self.encode_conditioning(prompt, num_images_per_prompt, self.guided(guidance_scale), *encode_args)
        return self.guidance_condition(cond, guidance_scale)

    # ------------------------------------------------------------------ stage: schedule and noise
    def new_scheduler(self, num_inference_steps: int | None = 50, timesteps: list[int] | None = None,
                      sigmas: list[float] | None = None) -> Any:
        """A fresh copy of the pipeline's scheduler with its timesteps set (custom ones if given)."""
        scheduler = self.scheduler.clone()
        custom = {k: v for k, v in (("timesteps", timesteps), ("sigmas", sigmas)) if v is not None}
        steps = None if custom else num_inference_steps
        scheduler.set_timesteps(steps, device=self.device, **custom)
        return scheduler

    def planned_steps(self, num_inference_steps: int = 50, timesteps: list[int] | None = None,
                      sigmas: list[float] | None = None, **call_args: Any) -> int:
        """How many denoising steps (model calls, one callback each) a call with these arguments
        makes: the schedule's length, extra entries of second-order schedulers (Heun) included."""
        return len(self.new_scheduler(num_inference_steps, timesteps, sigmas).timesteps)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels if self.vae is not None else 4

    def latent_shape(self, batch_size: int, height: int, width: int) -> tuple[int, int, int, int]:
        f = self.vae_scale_factor
        return (batch_size, self.latent_channels, height // f, width // f)

    def prepare_latents(
        self,
        scheduler: Any,
        batch_size: int,
        height: int,
        width: int,
        generator: Generator = None,
        latents: torch.Tensor | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """x_T = σ_init · ε with ε ~ N(0, I) of shape (B, 4, H/f, W/f) (or the given latents)."""
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for {batch_size} images; pass one per image")
        if latents is None:
            latents = randn_tensor(self.latent_shape(batch_size, height, width), generator, self.device, dtype)
        return latents.to(self.device) * scheduler.init_noise_sigma

    # ------------------------------------------------------------------ stage: one model call
    def denoise_step(
        self,
        model_input: torch.Tensor,
        timesteps: torch.Tensor | float,
        cond: Conditioning,
        guidance_scale: GuidanceValue = 7.5,
        guidance_rescale: GuidanceValue = 0.0,
    ) -> torch.Tensor:
        """Guided model output for a batch.

        Args:
            model_input: (B, C, h, w) latents already scaled by each sample's scheduler.
            timesteps: one timestep, or (B,) per sample.
            cond: per-sample conditioning with B rows.
            guidance_scale, guidance_rescale: one value or (B,) per sample.

        Returns:
            (B, C, h, w): ε̂ (or v̂) after classifier-free guidance and optional rescale.
        """
        batch = model_input.shape[0]
        t = torch.as_tensor(timesteps, device=model_input.device)
        t = t.expand(batch) if t.ndim == 0 else t
        if cond.extra_channels is not None:
            model_input = torch.cat([model_input, cond.extra_channels.to(model_input.dtype)], dim=1)
        states, added, timestep_cond, copies = cond.model_inputs()
        output = self.unet(
            torch.cat([model_input] * copies), torch.cat([t] * copies), encoder_hidden_states=states,
            timestep_cond=timestep_cond, added_cond_kwargs=added or None,
        ).sample
        if copies == 1:
            return output
        uncond, text = output.chunk(2)
        guided = classifier_free_guidance(uncond, text, guidance_scale)
        if any_positive(guidance_rescale):
            guided = rescale_guidance(guided, text, guidance_rescale)
        return guided

    # ------------------------------------------------------------------ the loop
    def denoise(self, latents: torch.Tensor, scheduler: Any, timesteps: torch.Tensor, cond: Conditioning,
                sampling: Sampling) -> torch.Tensor:
        """Run the scheduler over `timesteps` for one job; returns x_0 latents."""
        step_kwargs = scheduler_step_kwargs(scheduler, sampling.generator, sampling.eta)
        self._num_timesteps = len(timesteps)
        for i, t in enumerate(self.steps_bar(timesteps)):
            if self.interrupt:  # set by a callback: the remaining steps are skipped
                continue
            model_input = scheduler.scale_model_input(latents, t)
            noise = self.denoise_step(model_input, t, cond, sampling.guidance_scale, sampling.guidance_rescale)
            latents = scheduler.step(noise, t, latents, **step_kwargs).prev_sample
            if sampling.after_step is not None:
                latents = sampling.after_step(i, t, latents)
            if sampling.callback is not None:
                latents, cond = self._run_callback(sampling, i, t, latents, cond)
        return latents

    def _run_callback(self, sampling: Sampling, i: int, t: Any, latents: torch.Tensor,
                      cond: Conditioning) -> tuple[torch.Tensor, Conditioning]:
        """`callback_on_step_end(pipe, i, t, tensors)`; returned tensors replace the current ones.

        Names map to `Conditioning` places through `CALLBACK_TENSORS`: (field, key of that dict field or None).
        """
        tensors = {"latents": latents}
        for name in sampling.callback_inputs:
            if name != "latents":
                field, key = CALLBACK_TENSORS[name]
                value = getattr(cond, field)
                tensors[name] = value.get(key) if key is not None else value
        out = sampling.callback(self, i, t, {k: tensors[k] for k in sampling.callback_inputs}) or {}
        changes: dict[str, Any] = {}
        for name, value in out.items():
            if name in CALLBACK_TENSORS:
                field, key = CALLBACK_TENSORS[name]
                changes[field] = value if key is None else {**changes.get(field, getattr(cond, field)), key: value}
        return out.get("latents", latents), cond.with_(**changes) if changes else cond

    def check_callback_inputs(self, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in self.callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {unknown} are not available; choose from "
                f"{list(self.callback_tensor_inputs)}"
            )

    # ------------------------------------------------------------------ stage: VAE
    def encode_image(self, image: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [−1, 1] -> scaled latents z ~ q(z|x) · scaling_factor (B, 4, h, w).

        With a list of generators, row i is sampled with generator i.
        """
        vae = self.vae
        image = image.to(vae.device, vae.dtype)
        if isinstance(generator, list):
            rows = [vae.encode(image[i : i + 1]).latent_dist.sample(generator[i]) for i in range(image.shape[0])]
            latents = torch.cat(rows)
        else:
            latents = vae.encode(image).latent_dist.sample(generator)
        return vae.config.scaling_factor * latents

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, 4, h, w) -> images (B, 3, H, W) in about [−1, 1]: D(z / scaling_factor)."""
        vae = self.vae
        latents = latents.to(vae.device, vae.dtype)
        mean, std = vae.config.get("latents_mean"), vae.config.get("latents_std")
        if mean is not None and std is not None:
            shape = (1, -1, 1, 1)
            mean_t = torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(shape)
            std_t = torch.tensor(std, device=latents.device, dtype=latents.dtype).view(shape)
            latents = latents * std_t / vae.config.scaling_factor + mean_t
        else:
            latents = latents / vae.config.scaling_factor
        return vae.decode(latents).sample

    def finish(self, latents: torch.Tensor, output_type: str, return_dict: bool) -> Any:
        """Decode (unless `latent`), postprocess, and wrap like Diffusers."""
        images = latents if output_type == "latent" else self.decode_latents(latents)
        images = postprocess(images, output_type)
        return ImagePipelineOutput(images) if return_dict else (images, None)

    # ------------------------------------------------------------------ text-to-image
    @scaled_by("cross_attention_kwargs")  # LoRA scale
    @torch.no_grad()
    def __call__(
        self,
        prompt: Prompt | None = None,
        height: int | None = None,
        width: int | None = None,
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
        """Generate images from text; arguments and defaults as in Diffusers' pipeline."""
        height, width = self.default_size(height, width)
        cond = self._start_call(output_type, callback_on_step_end_tensor_inputs, guidance_scale, prompt,
                                num_images_per_prompt, negative_prompt, prompt_embeds, negative_prompt_embeds,
                                clip_skip)
        scheduler = self.new_scheduler(num_inference_steps, timesteps, sigmas)
        latents = self.prepare_latents(scheduler, cond.batch_size, height, width, generator, latents,
                                       cond.prompt_embeds.dtype)
        sampling = Sampling(guidance_scale, guidance_rescale, generator, eta, callback_on_step_end,
                            callback_on_step_end_tensor_inputs)
        latents = self.denoise(latents, scheduler, scheduler.timesteps, cond, sampling)
        return self.finish(latents, output_type, return_dict)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_prompt_args(prompt, prompt_embeds, negative_prompt, negative_prompt_embeds) -> None:
    if (prompt is None) == (prompt_embeds is None):
        raise ValueError("pass exactly one of prompt and prompt_embeds")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("pass at most one of negative_prompt and negative_prompt_embeds")
    if prompt_embeds is not None and negative_prompt_embeds is not None:
        if prompt_embeds.shape != negative_prompt_embeds.shape:
            raise ValueError(
                f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
                f"{tuple(negative_prompt_embeds.shape)} must have the same shape"
            )
