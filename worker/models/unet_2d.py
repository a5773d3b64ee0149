"""Unconditional UNet of DDPM (Ho et al., 2020), Diffusers' `UNet2DModel` config and keys.

conv_in -> down levels (keeping every intermediate as a skip) -> mid -> up levels (consuming
the skips in reverse) -> GroupNorm, SiLU, conv_out. The timestep enters every resnet through
the time embedding.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import nn

from worker.runtime.configuration import register_to_config
from worker.models.embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps, timesteps_for_batch
from worker.models.errors import ModelConfigError
from worker.models.modeling import ModelMixin
from worker.models.outputs import UNetOutput
from worker.models.unet_blocks import (MID_BLOCKS, BlockSpec, build_block, check_resample_type, down_levels,
                                       up_levels)


class UNet2DModel(ModelMixin):
    """`model(sample (B, C, H, W), timestep).sample` -> (B, out_channels, H, W).

    `attention_head_dim` here is the size of one head (None: one head per level).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: Sequence[str] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2D",
        up_block_types: Sequence[str] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: Sequence[int] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int | None = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        num_train_timesteps: int | None = None,
    ):
        super().__init__()
        _check_levels(down_block_types, up_block_types, block_out_channels)
        check_resample_type("downsample_type", downsample_type)
        check_resample_type("upsample_type", upsample_type)
        self.sample_size = sample_size
        base = block_out_channels[0]
        time_embed_dim = time_embedding_dim or base * 4
        # Built in the reference's order (conv_in, embeddings, levels) so a seed gives the same init.
        self.conv_in = nn.Conv2d(in_channels, base, kernel_size=3, padding=1)
        self.time_proj, time_input_dim = _time_projection(self.config)
        self.time_embedding = TimestepEmbedding(time_input_dim, time_embed_dim)
        self.class_embedding = _class_embedding(class_embed_type, num_class_embeds, time_input_dim, time_embed_dim)
        spec = BlockSpec(in_channels=0, out_channels=0, temb_channels=time_embed_dim, num_layers=layers_per_block,
                         eps=norm_eps, act_fn=act_fn, groups=norm_num_groups, time_scale_shift=resnet_time_scale_shift,
                         dropout=dropout, downsample_padding=downsample_padding,
                         attention_head_dim=attention_head_dim)
        self.down_blocks = nn.ModuleList(down_levels(replace(spec, resample=downsample_type), down_block_types,
                                                     block_out_channels))
        self.mid_block = None
        if mid_block_type is not None:
            self.mid_block = build_block(MID_BLOCKS, "mid", mid_block_type, _mid_spec(spec, self.config))
        up_layers = [{"num_layers": layers_per_block + 1}] * len(up_block_types)
        self.up_blocks = nn.ModuleList(up_levels(replace(spec, resample=upsample_type), up_block_types,
                                                 block_out_channels, up_layers))
        self.conv_norm_out = nn.GroupNorm(norm_num_groups or min(base // 4, 32), base, eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(base, out_channels, kernel_size=3, padding=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,
                class_labels: torch.Tensor | None = None, return_dict: bool = True) -> UNetOutput | tuple:
        """sample (B, in_channels, H, W); timestep scalar, 0-d or (B,) -> (B, out_channels, H, W)."""
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        timesteps = timesteps_for_batch(timestep, sample.shape[0], sample.device)
        emb = self.time_embedding(self.time_proj(timesteps).to(self.dtype))  # (B, time_embed_dim)
        emb = self._add_class_embedding(emb, class_labels)
        h, skips = self._down(sample, emb)
        if self.mid_block is not None:
            h = self.mid_block(h, emb)
        h, image = self._up(h, skips, emb)
        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))
        if image is not None:  # NCSN++ output skip
            h = h + image
        if self.config.time_embedding_type == "fourier":
            h = h / timesteps.reshape(-1, 1, 1, 1)  # score-SDE models predict noise / sigma
        return UNetOutput(sample=h) if return_dict else (h,)

    def _down(self, sample: torch.Tensor, emb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Down path; NCSN++ levels also carry the input image down (their "input skip")."""
        h, image = self.conv_in(sample), sample
        skips = [h]
        for block in self.down_blocks:
            if block.takes_image:
                h, block_skips, image = block(h, emb, image)
            else:
                h, block_skips = block(h, emb)
            skips.extend(block_skips)
        return h, skips

    def _up(self, h: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Up path, consuming the skips in reverse; NCSN++ levels build the output-skip image."""
        image = None
        for block in self.up_blocks:
            n = len(block.resnets)
            level_skips, skips = skips[-n:], skips[:-n]
            if block.takes_image:
                h, image = block(h, level_skips, emb, image)
            else:
                h = block(h, level_skips, emb)
        return h, image

    def _add_class_embedding(self, emb: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        if self.class_embedding is None:
            if class_labels is not None:
                raise ValueError("class_labels were given but the model has no class embedding")
            return emb
        if class_labels is None:
            raise ValueError("this model is class-conditional: pass class_labels")
        if self.config.class_embed_type == "timestep":
            class_labels = self.time_proj(class_labels)
        return emb + self.class_embedding(class_labels).to(self.dtype)


def _check_levels(down: Sequence[str], up: Sequence[str], channels: Sequence[int]) -> None:
    if not len(down) == len(up) == len(channels):
        raise ModelConfigError(
            f"down_block_types ({len(down)}), up_block_types ({len(up)}) and block_out_channels "
            f"({len(channels)}) must have the same length"
        )


def _time_projection(config) -> tuple[nn.Module, int]:
    """The parameter-free (or fixed) timestep features and their width."""
    width = config.block_out_channels[0]
    kind = config.time_embedding_type
    if kind == "positional":
        return Timesteps(width, config.flip_sin_to_cos, config.freq_shift), width
    if kind == "fourier":
        return GaussianFourierProjection(width, scale=16), 2 * width
    if kind == "learned" and config.num_train_timesteps:
        return nn.Embedding(config.num_train_timesteps, width), width
    raise ModelConfigError(
        f"time_embedding_type {kind!r} is not supported; use 'positional', 'fourier' or "
        "'learned' (with num_train_timesteps)"
    )


def _class_embedding(kind: str | None, num_class_embeds: int | None, time_input_dim: int,
                     time_embed_dim: int) -> nn.Module | None:
    if kind is None:
        return nn.Embedding(num_class_embeds, time_embed_dim) if num_class_embeds is not None else None
    if kind == "timestep":
        return TimestepEmbedding(time_input_dim, time_embed_dim)
    if kind == "identity":
        return nn.Identity()
    raise ModelConfigError(f"class_embed_type {kind!r} is not supported; use None, 'timestep' or 'identity'")


def _mid_spec(spec: BlockSpec, config) -> BlockSpec:
    channels = config.block_out_channels[-1]
    # The mid attention normalises only with the default time conditioning, unless told otherwise.
    norm = config.attn_norm_num_groups is not None or config.resnet_time_scale_shift == "default"
    groups = config.norm_num_groups or min(channels // 4, 32)  # None: NCSN++'s rule
    return replace(spec, in_channels=channels, out_channels=channels, num_layers=1, groups=groups,
                   output_scale_factor=config.mid_block_scale_factor,
                   attention_head_dim=config.attention_head_dim or channels,
                   attention_norm=norm, attention_groups=config.attn_norm_num_groups,
                   add_attention=config.add_attention)
