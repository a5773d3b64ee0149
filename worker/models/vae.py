"""Encoder and decoder of the KL-regularised autoencoder of latent diffusion (Rombach et al., 2022).

Encoder: conv_in -> down levels (resnets, 2x downsampling with asymmetric padding) -> mid
(resnet, single-head attention, resnet) -> GroupNorm, SiLU, conv_out to 2 * latent channels
(mean and log-variance). The decoder mirrors it with one more resnet per level and no skips.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
from torch import nn

from worker.models.unet_blocks import MID_BLOCKS, BlockSpec, build_block, down_levels, run_checkpointed, up_levels


def _vae_spec(layers_per_block: int, norm_num_groups: int, act_fn: str, mid_attention: bool) -> BlockSpec:
    """Unconditioned levels: no time embedding, eps 1e-6, one attention head per level."""
    return BlockSpec(in_channels=0, out_channels=0, temb_channels=None, num_layers=layers_per_block, eps=1e-6,
                     act_fn=act_fn, groups=norm_num_groups, downsample_padding=0, add_attention=mid_attention)


def _mid_block(spec: BlockSpec, channels: int) -> nn.Module:
    mid = replace(spec, in_channels=channels, out_channels=channels, num_layers=1)
    return build_block(MID_BLOCKS, "mid", "UNetMidBlock2D", mid)


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> moments (B, 2 * out_channels, H / 2^(L-1), W / 2^(L-1))."""

    def __init__(self, in_channels: int, out_channels: int, down_block_types: Sequence[str],
                 block_out_channels: Sequence[int], layers_per_block: int, norm_num_groups: int, act_fn: str,
                 mid_block_add_attention: bool = True):
        super().__init__()
        spec = _vae_spec(layers_per_block, norm_num_groups, act_fn, mid_block_add_attention)
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(down_levels(spec, down_block_types, block_out_channels))
        self.mid_block = _mid_block(spec, block_out_channels[-1])
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[-1], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[-1], 2 * out_channels, kernel_size=3, padding=1)
        self.gradient_checkpointing = False  # recompute each level in the backward pass (training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h, _ = run_checkpointed(self, block, h)
        h = run_checkpointed(self, self.mid_block, h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))


class Decoder(nn.Module):
    """latents (B, in_channels, h, w) -> images (B, out_channels, h * 2^(L-1), w * 2^(L-1))."""

    def __init__(self, in_channels: int, out_channels: int, up_block_types: Sequence[str],
                 block_out_channels: Sequence[int], layers_per_block: int, norm_num_groups: int, act_fn: str,
                 mid_block_add_attention: bool = True):
        super().__init__()
        spec = _vae_spec(layers_per_block, norm_num_groups, act_fn, mid_block_add_attention)
        rev = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(in_channels, rev[0], kernel_size=3, padding=1)
        self.mid_block = _mid_block(spec, rev[0])
        # No skips: level i's first resnet takes the previous level's width.
        levels = [{"in_channels": rev[max(i - 1, 0)], "num_layers": layers_per_block + 1} for i in range(len(rev))]
        self.up_blocks = nn.ModuleList(up_levels(spec, up_block_types, block_out_channels, levels))
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=1e-6)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)
        self.gradient_checkpointing = False  # recompute each level in the backward pass (training)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = run_checkpointed(self, self.mid_block, self.conv_in(z))
        for block in self.up_blocks:
            h = run_checkpointed(self, block, h)
        return self.conv_out(self.conv_act(self.conv_norm_out(h)))
