"""`AutoencoderKL`: images <-> latents of Stable Diffusion, Diffusers' config keys and names.

`encode(x).latent_dist` is the posterior over latents; `decode(z).sample` the image. The
pipelines scale latents with `scaling_factor` (and `shift_factor` / `latents_mean`/`std`
where set); this class only records those numbers in its config.

Memory savers: `enable_slicing()` runs the batch one sample at a time; `enable_tiling()`
encodes/decodes images larger than `sample_size` in overlapping, blended tiles.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from worker.runtime.configuration import register_to_config
from worker.models.distributions import DiagonalGaussianDistribution
from worker.models.modeling import ModelMixin
from worker.models.outputs import AutoencoderKLOutput, DecoderOutput
from worker.models.tiling import tiled_apply
from worker.models.vae import Decoder, Encoder


class AutoencoderKL(ModelMixin):
    """Images (B, 3, H, W) in [-1, 1] <-> latents (B, latent_channels, H / f, W / f), f = 2^(levels-1)."""

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        down_block_types: Sequence[str] = ("DownEncoderBlock2D",),
        up_block_types: Sequence[str] = ("UpDecoderBlock2D",),
        block_out_channels: Sequence[int] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int | Sequence[int] = 32,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: Sequence[float] | None = None,
        latents_std: Sequence[float] | None = None,
        force_upcast: bool = True,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
    ):
        super().__init__()
        shared = dict(block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                      norm_num_groups=norm_num_groups, act_fn=act_fn, mid_block_add_attention=mid_block_add_attention)
        self.encoder = Encoder(in_channels, latent_channels, down_block_types, **shared)
        self.decoder = Decoder(latent_channels, out_channels, up_block_types, **shared)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1) if use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        self.use_slicing = False
        self.use_tiling = False
        size = sample_size[0] if isinstance(sample_size, (list, tuple)) else sample_size
        self.tile_sample_min_size = size
        self.tile_latent_min_size = int(size / 2 ** (len(block_out_channels) - 1))
        self.tile_overlap_factor = 0.25

    @property
    def scale_factor(self) -> int:
        """Pixels per latent along each side (8 for SD)."""
        return 2 ** (len(self.config.block_out_channels) - 1)

    def enable_slicing(self) -> None:
        self.use_slicing = True

    def disable_slicing(self) -> None:
        self.use_slicing = False

    def enable_tiling(self, use_tiling: bool = True) -> None:
        self.use_tiling = use_tiling

    def disable_tiling(self) -> None:
        self.use_tiling = False

    def encode(self, x: torch.Tensor, return_dict: bool = True, *, slicing: bool | None = None,
               tiling: bool | None = None) -> AutoencoderKLOutput | tuple:
        """x (B, 3, H, W) -> posterior with mean (B, latent_channels, H / f, W / f).

        `slicing` / `tiling` override the model's switches for this call only, so a model shared
        by concurrent jobs never needs its state flipped.
        """
        tiled = self.use_tiling if tiling is None else tiling
        moments = self._per_sample(lambda one: self._encode(one, tiled), x, slicing)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: torch.Generator | None = None, *,
               slicing: bool | None = None, tiling: bool | None = None) -> DecoderOutput | tuple:
        """z (B, latent_channels, h, w), already unscaled -> images (B, 3, h * f, w * f).

        `generator` is accepted for signature compatibility; decoding draws no noise.
        `slicing` / `tiling` override the model's switches for this call only.
        """
        tiled = self.use_tiling if tiling is None else tiling
        images = self._per_sample(lambda one: self._decode(one, tiled), z, slicing)
        return DecoderOutput(sample=images) if return_dict else (images,)

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None) -> DecoderOutput | tuple:
        """Reconstruct: encode, take the posterior mode (or a sample), decode."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z, return_dict=return_dict)

    def _per_sample(self, fn, x: torch.Tensor, slicing: bool | None) -> torch.Tensor:
        if (self.use_slicing if slicing is None else slicing) and x.shape[0] > 1:
            return torch.cat([fn(one) for one in x.split(1)])
        return fn(x)

    def _whole_or_tiled(self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], tiled: bool,
                        tile_in: int, tile_out: int) -> torch.Tensor:
        """fn(x), or fn over overlapping `tile_in` tiles when tiling is on and x is larger than one tile."""
        if tiled and max(x.shape[-2:]) > tile_in:
            return tiled_apply(x, fn, tile_in, tile_out, self.tile_overlap_factor)
        return fn(x)

    def _encode(self, x: torch.Tensor, tiled: bool) -> torch.Tensor:
        """x (B, 3, H, W) -> moments (B, 2 * latent_channels, H / f, W / f)."""
        return self._whole_or_tiled(x, self._encode_tile, tiled, self.tile_sample_min_size, self.tile_latent_min_size)

    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(x)
        return self.quant_conv(moments) if self.quant_conv is not None else moments

    def _decode(self, z: torch.Tensor, tiled: bool) -> torch.Tensor:
        """z (B, latent_channels, h, w) -> images (B, 3, h * f, w * f)."""
        return self._whole_or_tiled(z, self._decode_tile, tiled, self.tile_latent_min_size, self.tile_sample_min_size)

    def _decode_tile(self, z: torch.Tensor) -> torch.Tensor:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)
