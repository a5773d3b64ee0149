"""What pipelines return when `return_dict=True` (dict-like, as Diffusers' pipeline outputs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.models.outputs import BaseOutput


@dataclass
class ImagePipelineOutput(BaseOutput):
    """Generated images.

    Attributes:
        images: a list of PIL images (`output_type="pil"`), a float32 array (B, H, W, C) in
            [0, 1] (`"np"`), a tensor (B, C, H, W) in [0, 1] (`"pt"`) or raw latents (`"latent"`).
        nsfw_content_detected: always None; Kiln ships no safety checker (so, as in Diffusers
            without one, it is not an item: `out[0]` and `out.to_tuple()` hold only the images).
    """

    images: Any = None
    nsfw_content_detected: list[bool] | None = None


# Diffusers' names for the same output.
StableDiffusionPipelineOutput = StableDiffusionXLPipelineOutput = ImagePipelineOutput
