"""`FlowMatchPipeline`: the stages FLUX and SD3 pipelines share around their transformer.

    encode_conditioning -> Conditioning (per-row text states; pooled text in `added["pooled_projections"]`)
    new_scheduler -> a fresh flow scheduler per call (the pipeline's own is never stepped)
    prepare latents -> denoise (per step: denoise_step = one transformer call, then scheduler.step)
    decode_latents -> images in [−1, 1] -> images.postprocess

Subclasses define `denoise_step` (how the transformer is called) and their `__call__`. Nothing
per-call is stored on the pipeline, so one loaded pipeline serves concurrent jobs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from worker.lora import LoraLoaderMixin
from worker.pipelines.conditioning import Conditioning
from worker.pipelines.flow import denormalize_latents, normalize_latents
from worker.pipelines.guidance import GuidanceValue
from worker.pipelines.images import postprocess
from worker.pipelines.output import ImagePipelineOutput
from worker.pipelines.pipeline_utils import DiffusionPipeline
from worker.pipelines.prompts import as_prompt_list, negative_prompts
from worker.pipelines.stable_diffusion import Generator, StableDiffusionPipeline, StepCallback, scheduler_step_kwargs

POOLED = "pooled_projections"


@dataclass
class FlowSampling:
    """Per-call settings of a flow pipeline's denoising loop.

    Attributes:
        cfg_scale: classifier-free guidance scale (FLUX's `true_cfg_scale`, SD3's `guidance_scale`);
            used only when the conditioning has a negative branch. One value or (B,).
        guidance: FLUX's embedded guidance per row (B,), or None.
        model_kwargs: per-call transformer inputs shared by all rows (FLUX `txt_ids`/`img_ids`,
            `joint_attention_kwargs`).
        after_step: (step index, timestep, latents) -> latents; inpainting blends here.
        skip_layers: SD3 skip-layer guidance `(layers, scale, start, stop)`, or None.
    """

    cfg_scale: GuidanceValue = 1.0
    guidance: torch.Tensor | None = None
    generator: Generator = None
    callback: StepCallback | None = None
    callback_inputs: Sequence[str] = ("latents",)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    after_step: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    skip_layers: tuple[Sequence[int], float, float, float] | None = None


def prompt_batches(prompt: Any, second: Any, negative: Any, negative_second: Any,
                   batch: int) -> tuple[list[str] | None, list[str] | None, list[str], list[str]]:
    """(prompts, second-encoder prompts, negatives, second-encoder negatives) as lists of B.

    A missing second prompt repeats the first; a missing negative is "" (per row).
    """
    prompts = None if prompt is None else as_prompt_list(prompt)
    seconds = None if prompt is None else as_prompt_list(second or prompt)
    negatives = negative_prompts(negative, batch)
    negative_seconds = negative_prompts(negative_second, batch) if negative_second else negatives
    return prompts, seconds, negatives, negative_seconds


class FlowMatchPipeline(LoraLoaderMixin, DiffusionPipeline):
    """Shared stages of the flow-matching transformer pipelines (not loadable by itself)."""

    callback_tensor_inputs: tuple[str, ...] = ("latents", "prompt_embeds")
    default_sample_size = 128

    # ------------------------------------------------------------------ sizes and devices
    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell: 2^(number of VAE blocks − 1) (8 for FLUX and SD3)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 8

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels if self.vae is not None else 16

    @property
    def execution_device(self) -> torch.device:
        """Where latents live: the offload target when offloading, else the transformer's device."""
        offload = getattr(self, "_offload_device", None)
        if offload is not None:
            return offload
        return self.transformer.device if self.transformer is not None else self.device

    @property
    def embeds_dtype(self) -> torch.dtype:
        """Text states and latents take the transformer's dtype (text encoders may differ)."""
        return self.transformer.dtype

    def batch_size_of(self, prompt: Any, prompt_embeds: torch.Tensor | None) -> int:
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of prompt and prompt_embeds")
        return len(as_prompt_list(prompt)) if prompt is not None else prompt_embeds.shape[0]

    # the same check as SD's, against this class's `callback_tensor_inputs`
    check_callback_inputs = StableDiffusionPipeline.check_callback_inputs

    # ------------------------------------------------------------------ the loop
    def denoise_step(self, latents: torch.Tensor, timestep: torch.Tensor, cond: Conditioning,
                     sampling: FlowSampling, step: int = 0, steps: int = 1) -> torch.Tensor:
        """One guided velocity prediction for the batch: each family calls its transformer its way."""
        raise TypeError(f"{type(self).__name__} is a FlowMatchPipeline without a denoise_step of its own")

    def denoise(self, latents: torch.Tensor, scheduler: Any, timesteps: torch.Tensor, cond: Conditioning,
                sampling: FlowSampling, steps: int | None = None) -> torch.Tensor:
        """Integrate the flow over `timesteps` for one job; returns x_0 latents.

        `steps` is the step count step-dependent guidance measures against (default: the timesteps).
        """
        step_kwargs = scheduler_step_kwargs(scheduler, sampling.generator, 0.0)
        for i, t in enumerate(timesteps):
            velocity = self.denoise_step(latents, t, cond, sampling, i, steps or len(timesteps))
            latents = scheduler.step(velocity, t, latents, return_dict=False, **step_kwargs)[0]
            if sampling.after_step is not None:
                latents = sampling.after_step(i, t, latents)
            if sampling.callback is not None:
                latents, cond = self._run_callback(sampling, i, t, latents, cond)
        return latents

    def _callback_tensors(self, latents: torch.Tensor, cond: Conditioning) -> dict[str, torch.Tensor | None]:
        return {
            "latents": latents, "prompt_embeds": cond.prompt_embeds,
            "negative_prompt_embeds": cond.negative_prompt_embeds,
            "pooled_prompt_embeds": cond.added.get(POOLED),
            "negative_pooled_prompt_embeds": cond.negative_added.get(POOLED),
        }

    def _run_callback(self, sampling: FlowSampling, i: int, t: Any, latents: torch.Tensor,
                      cond: Conditioning) -> tuple[torch.Tensor, Conditioning]:
        """`callback_on_step_end(pipe, i, t, tensors)`; returned tensors replace the current ones."""
        tensors = self._callback_tensors(latents, cond)
        out = sampling.callback(self, i, t, {k: tensors[k] for k in sampling.callback_inputs}) or {}
        pooled = out.get("pooled_prompt_embeds", cond.added.get(POOLED))
        negative_pooled = out.get("negative_pooled_prompt_embeds", cond.negative_added.get(POOLED))
        cond = cond.with_(
            prompt_embeds=out.get("prompt_embeds", cond.prompt_embeds),
            negative_prompt_embeds=out.get("negative_prompt_embeds", cond.negative_prompt_embeds),
            added={**cond.added, POOLED: pooled} if pooled is not None else cond.added,
            negative_added={**cond.negative_added, POOLED: negative_pooled}
            if negative_pooled is not None else cond.negative_added,
        )
        return out.get("latents", latents), cond

    # ------------------------------------------------------------------ stage: VAE
    def encode_image(self, image: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [−1, 1] -> normalised latents (z − shift)·scale, z ~ q(z|x) (B, C, h, w).

        With a list of generators, row i is sampled with generator i.
        """
        vae = self.vae
        image = image.to(self.execution_device, vae.dtype)
        if isinstance(generator, list):
            rows = [vae.encode(image[i : i + 1]).latent_dist.sample(generator[i]) for i in range(image.shape[0])]
            latents = torch.cat(rows)
        else:
            latents = vae.encode(image).latent_dist.sample(generator)
        return normalize_latents(vae, latents)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> images (B, 3, H, W) in about [−1, 1]: D(z / scale + shift)."""
        latents = denormalize_latents(self.vae, latents).to(self.execution_device, self.vae.dtype)
        return self.vae.decode(latents, return_dict=False)[0]

    def finish(self, latents: torch.Tensor, output_type: str, return_dict: bool,
               to_spatial: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> Any:
        """Decode (unless `latent`: the model's latents as they are), postprocess, wrap like Diffusers."""
        images = latents if output_type == "latent" else self.decode_latents(to_spatial(latents))
        images = postprocess(images, output_type)
        return ImagePipelineOutput(images) if return_dict else (images,)
