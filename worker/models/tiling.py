"""Run an image-to-image network on overlapping tiles and blend the seams.

Tiles of `tile_in` input pixels start every `tile_in * (1 - overlap)` pixels; each output tile
(`tile_out` pixels for a full tile) is linearly cross-faded over `tile_out * overlap` rows and
columns with its already-blended upper and left neighbours, then cropped to
`tile_out - blend` before the tiles are stitched. This is the scheme of Diffusers'
tiled VAE, reproduced so results match it.
"""

from __future__ import annotations

from typing import Callable

import torch


def tiled_apply(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], tile_in: int, tile_out: int,
                overlap: float = 0.25) -> torch.Tensor:
    """x (B, C, H, W) -> fn applied tile by tile, (B, C', H * tile_out / tile_in, ...)."""
    stride = int(tile_in * (1 - overlap))
    blend = int(tile_out * overlap)
    keep = tile_out - blend
    rows = [[fn(x[:, :, i:i + tile_in, j:j + tile_in]) for j in range(0, x.shape[3], stride)]
            for i in range(0, x.shape[2], stride)]
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            if i > 0:
                _fade_in(rows[i - 1][j], tile, blend, dim=2)
            if j > 0:
                _fade_in(row[j - 1], tile, blend, dim=3)
    return torch.cat([torch.cat([t[:, :, :keep, :keep] for t in row], dim=3) for row in rows], dim=2)


def _fade_in(previous: torch.Tensor, tile: torch.Tensor, extent: int, dim: int) -> None:
    """In place: the first `extent` lines of `tile` along `dim` ramp from `previous`'s last lines.

    tile[k] = previous[-extent + k] * (1 - k / extent) + tile[k] * (k / extent), k < extent.
    """
    extent = min(previous.shape[dim], tile.shape[dim], extent)
    if extent <= 0:
        return
    shape = [1, 1, 1, 1]
    shape[dim] = extent
    ramp = (torch.arange(extent, dtype=torch.float64) / extent).to(tile.dtype).view(shape).to(tile.device)
    head = tile.narrow(dim, 0, extent)
    tail = previous.narrow(dim, previous.shape[dim] - extent, extent)
    head.copy_(tail * (1 - ramp) + head * ramp)
