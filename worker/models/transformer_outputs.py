"""What the transformer models return when `return_dict=True`: `.sample`, and `[0]` like a tuple."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Transformer2DModelOutput:
    """Model prediction: FLUX (B, N, C) packed tokens, SD3 (B, C, H, W) latents."""

    sample: torch.Tensor

    def __getitem__(self, index: int | slice):
        return self.to_tuple()[index]

    def __len__(self) -> int:
        return 1

    def to_tuple(self) -> tuple[torch.Tensor]:
        return (self.sample,)
