"""What pipelines return when `return_dict=True`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ImagePipelineOutput:
    """Generated images.

    Attributes:
        images: a list of PIL images (`output_type="pil"`), a float32 array (B, H, W, C) in
            [0, 1] (`"np"`), a tensor (B, C, H, W) in [0, 1] (`"pt"`) or raw latents (`"latent"`).
        nsfw_content_detected: always None; Kiln ships no safety checker.
    """

    images: Any
    nsfw_content_detected: list[bool] | None = None

    def __getitem__(self, index: int) -> Any:
        return (self.images,)[index]
