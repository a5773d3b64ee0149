"""A model loaded for serving: the pipeline the cache holds, with the batchers its jobs share.

The denoiser's calls of all running jobs go through one step batcher; a latent model's VAE decodes
through another (unless the pipeline's decode changes the shared VAE: `upcasts_vae`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.batching import BatchedModule, BatchedTransformer, StepBatcher

# The denoiser's component name → the stand-in that sends its calls through the step batcher.
# A pipeline has one of these (UNet families: `unet`; FLUX and SD3: `transformer`).
DENOISERS: dict[str, type] = {"unet": BatchedModule, "transformer": BatchedTransformer}


def denoiser_name(pipeline: Any) -> str:
    """The component name of the pipeline's denoiser."""
    for name in DENOISERS:
        if getattr(pipeline, name, None) is not None:
            return name
    raise ValueError(f"{type(pipeline).__name__} has no denoiser (looked for {', '.join(DENOISERS)})")


@dataclass
class LoadedModel:
    """A pipeline held by the cache, with the batchers its jobs share: one for denoiser steps and,
    for latent models, one for VAE decodes."""

    name: str
    pipeline: Any
    batcher: StepBatcher
    decoder: StepBatcher | None = None
    denoiser: str = "unet"

    @property
    def components(self) -> dict[str, Any]:
        return self.pipeline.components if self.pipeline is not None else {}

    def close(self) -> None:
        """Stop the batcher threads and drop the pipeline (the cache calls this once the model is
        evicted and no job uses it), so its memory can be freed."""
        self.batcher.close()
        if self.decoder is not None:
            self.decoder.close()
        self.pipeline = None


def call_cost_cap(pipeline: Any, max_rows: int, size: tuple[int, int]) -> int:
    """The most latent elements one batched call may carry: `max_rows` rows of a `size` (w, h)
    image. A request bigger than that runs alone, so a call never takes much longer than a full
    batch of default-size jobs.

    A row's elements are C × (w / s) × (h / s): s the VAE's downscale (1 in pixel space), C the
    latent channels, or a UNet's input channels where more (inpainting's 9). FLUX's packed
    (tokens, 64) rows hold the same count as their (16, h/s, w/s) latents.
    """
    vae, denoiser = getattr(pipeline, "vae", None), getattr(pipeline, denoiser_name(pipeline))
    scale = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    channels = vae.config.latent_channels if vae is not None else denoiser.config.in_channels
    if denoiser_name(pipeline) == "unet":
        channels = max(channels, denoiser.config.in_channels)
    width, height = size
    return max_rows * channels * (width // scale) * (height // scale)


def load_model(name: str, pipeline: Any, max_rows: int, max_call_cost: int | None = None) -> LoadedModel:
    """The cache's value for a pipeline: its batchers started (`max_call_cost`: see `call_cost_cap`)."""
    denoiser = denoiser_name(pipeline)
    batcher = StepBatcher(getattr(pipeline, denoiser), max_rows=max_rows, name=name, max_call_cost=max_call_cost)
    decoder = None
    if getattr(pipeline, "vae", None) is not None and not pipeline.upcasts_vae:
        # A decode waits 5 ms for jobs finishing the same step, while any job is still denoising.
        decoder = StepBatcher(pipeline.vae, max_rows=max_rows, name=f"{name}-vae", method="decode",
                              min_window_s=0.005, upstream=batcher)
    return LoadedModel(name, pipeline, batcher, decoder, denoiser)
