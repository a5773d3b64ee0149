"""Patchify latents and add 2-D sin-cos position embeddings (ViT / DiT, as used by SD3).

`PatchEmbed`: a stride-p conv turns (B, C, H, W) into (B, H/p * W/p, D) tokens. With
`pos_embed_max_size` (SD3) a fixed (max x max) grid of embeddings is stored in the checkpoint
(`pos_embed.pos_embed`) and the centre (H/p x W/p) window is cropped for each input; without
it the embeddings are computed for the input's grid.
"""

from __future__ import annotations

import torch
from torch import nn


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """pos (M,) -> (M, dim): [sin(pos * w), cos(pos * w)], w_i = 10000^(-2i / dim), in float64."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0))
    angles = torch.outer(pos.reshape(-1).double(), omega)  # (M, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def sincos_2d_pos_embed(dim: int, grid_h: int, grid_w: int, base_size: int, interpolation_scale: float = 1.0,
                        device: torch.device | None = None) -> torch.Tensor:
    """(grid_h * grid_w, dim) float32, row-major; the first half encodes the column, the second the row.

    Coordinates are rescaled to a `base_size` grid: pos = index / (grid / base_size) / interpolation_scale.
    """
    if dim % 4 != 0:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4; got {dim}")
    rows = torch.arange(grid_h, dtype=torch.float32, device=device) / (grid_h / base_size) / interpolation_scale
    cols = torch.arange(grid_w, dtype=torch.float32, device=device) / (grid_w / base_size) / interpolation_scale
    row_pos, col_pos = torch.meshgrid(rows, cols, indexing="ij")  # (grid_h, grid_w) each
    return torch.cat([sincos_1d(dim // 2, col_pos), sincos_1d(dim // 2, row_pos)], dim=1).float()


class PatchEmbed(nn.Module):
    """(B, C, H, W) -> (B, H/p * W/p, D): conv patchify + 2-D sin-cos positions."""

    def __init__(self, height: int, width: int, patch_size: int, in_channels: int, embed_dim: int,
                 pos_embed_max_size: int | None = None, interpolation_scale: float = 1.0):
        super().__init__()
        self.patch_size = patch_size
        self.pos_embed_max_size = pos_embed_max_size
        self.base_size = height // patch_size
        self.interpolation_scale = interpolation_scale
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        if pos_embed_max_size:
            table = sincos_2d_pos_embed(embed_dim, pos_embed_max_size, pos_embed_max_size, self.base_size,
                                        interpolation_scale)
            self.register_buffer("pos_embed", table[None], persistent=True)  # (1, max * max, D)
        else:
            self.pos_embed = None

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        B, C, H, W = latent.shape
        tokens = self.proj(latent).flatten(2).transpose(1, 2)  # (B, h * w, D)
        h, w = H // self.patch_size, W // self.patch_size
        return (tokens + self.position_embedding(h, w, tokens.device)).to(tokens.dtype)

    def position_embedding(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """(1, h * w, D): the centre crop of the stored table, or a fresh table for an h x w grid."""
        if self.pos_embed is None:
            return sincos_2d_pos_embed(self.proj.out_channels, h, w, self.base_size, self.interpolation_scale,
                                       device)[None]
        size = self.pos_embed_max_size
        if h > size or w > size:
            raise ValueError(f"latent grid {h}x{w} patches exceeds pos_embed_max_size {size}")
        top, left = (size - h) // 2, (size - w) // 2
        table = self.pos_embed.reshape(1, size, size, -1)[:, top:top + h, left:left + w, :]
        return table.reshape(1, h * w, -1)
