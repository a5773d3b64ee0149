"""Unconditional image generation with a `UNet2DModel` (Ho et al. 2020, "Denoising Diffusion
Probabilistic Models"), with any scheduler (DDPM ancestral sampling, DDIM, ...)."""

from __future__ import annotations

from typing import Any, Callable

import torch

from worker.pipelines.images import postprocess
from worker.pipelines.output import ImagePipelineOutput
from worker.pipelines.pipeline_utils import DiffusionPipeline
from worker.schedulers import randn_tensor

Generator = torch.Generator | list[torch.Generator] | None


class DDPMPipeline(DiffusionPipeline):
    """Pixel-space sampling: start from N(0, I) images and denoise them with the scheduler."""

    def __init__(self, unet: Any, scheduler: Any) -> None:
        self.register_components(unet=unet, scheduler=scheduler)

    def sample_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        """(B, C, H, W) from the UNet config (`sample_size` an int or [H, W])."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (batch_size, self.unet.config.in_channels, height, width)

    def prepare_latents(self, batch_size: int, generator: Generator = None) -> torch.Tensor:
        """Initial noise x_T (B, C, H, W), drawn as Diffusers draws it for the same generator."""
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch_size}")
        return randn_tensor(self.sample_shape(batch_size), generator, device=self.device, dtype=self.unet.dtype)

    def denoise_step(self, sample: torch.Tensor, timesteps: torch.Tensor | int) -> torch.Tensor:
        """Model output for a batch (B, C, H, W) at per-sample (B,) or shared timesteps."""
        return self.unet(sample, timesteps).sample

    def planned_steps(self, num_inference_steps: int = 1000, **call_args: Any) -> int:
        """Denoising steps (model calls, one callback each) a call with these arguments makes."""
        scheduler = self.scheduler.clone()
        scheduler.set_timesteps(num_inference_steps)
        return len(scheduler.timesteps)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: Generator = None,
        num_inference_steps: int = 1000,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
    ) -> ImagePipelineOutput | tuple[Any]:
        """Generate `batch_size` images in `num_inference_steps` scheduler steps.

        `callback_on_step_end(pipe, step_index, timestep, {"latents": sample})` runs after each
        step and may return replacement `latents` (or raise to stop).

        Returns:
            `ImagePipelineOutput` (or `(images,)` when `return_dict=False`); images as in
            `worker.pipelines.images.postprocess`.
        """
        scheduler = self.scheduler.clone()
        scheduler.set_timesteps(num_inference_steps, device=self.device)
        sample = self.prepare_latents(batch_size, generator)
        for i, t in enumerate(scheduler.timesteps):
            sample = scheduler.step(self.denoise_step(sample, t), t, sample, generator=generator).prev_sample
            if callback_on_step_end is not None:
                sample = callback_on_step_end(self, i, t, {"latents": sample}).get("latents", sample)
        images = postprocess(sample, output_type)
        return ImagePipelineOutput(images) if return_dict else (images,)
