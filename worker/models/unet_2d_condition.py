"""Text-conditioned latent UNet of Stable Diffusion (Rombach et al., 2022) and SDXL (Podell et al., 2023).

Diffusers' `UNet2DConditionModel` config keys and state-dict names. One class covers SD 1.x
(conv projections, 8 heads, 768-d text), SD 2.x (linear projections, per-level head counts,
1024-d text), SDXL (`text_time` added embedding, deeper transformers, 2048-d text), LCM
(`time_cond_proj_dim` guidance embedding) and 9-channel inpainting (`in_channels=9`).

Naming quirk kept for compatibility: `attention_head_dim` in this config is the NUMBER of heads
per level (`num_attention_heads`, when given, means the same and wins).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import torch
from torch import nn

from worker.runtime.configuration import register_to_config
from worker.lora.mixin import scaled_by
from worker.models.activations import get_activation
from worker.models.attention import processor_kwargs
from worker.models.embeddings import GaussianFourierProjection, TimestepEmbedding, Timesteps, timesteps_for_batch
from worker.models.errors import ModelConfigError
from worker.models.modeling import ModelMixin
from worker.models.outputs import UNetOutput
from worker.models.unet_blocks import MID_BLOCKS, BlockSpec, build_block, down_levels, up_levels

# Mid-block types and the number of (attention, resnet) pairs after their first resnet.
MID_LAYERS = {"UNetMidBlock2DCrossAttn": 1, "UNetMidBlock2D": 0}


class UNet2DConditionModel(ModelMixin):
    """`unet(sample, timestep, encoder_hidden_states).sample`: the noise (or v) prediction.

    sample (B, in_channels, H, W); timestep scalar, 0-d or (B,) (one per sample, may differ);
    encoder_hidden_states (B, M, cross_attention_dim) -> (B, out_channels, H, W).
    """

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: Sequence[str] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                           "DownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        up_block_types: Sequence[str] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                         "CrossAttnUpBlock2D"),
        only_cross_attention: bool | Sequence[bool] = False,
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        layers_per_block: int | Sequence[int] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | Sequence[int] = 1280,
        transformer_layers_per_block: int | Sequence[int] | Sequence[Sequence[int]] = 1,
        reverse_transformer_layers_per_block: Sequence[Sequence[int]] | None = None,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | Sequence[int] = 8,
        num_attention_heads: int | Sequence[int] | None = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,
        resnet_out_scale_factor: float = 1.0,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        attention_type: str = "default",
        class_embeddings_concat: bool = False,
        mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = None,
        addition_embed_type_num_heads: int = 64,
    ):
        super().__init__()
        _check_config(self.config)
        self.sample_size = sample_size
        self.num_upsamplers = len(block_out_channels) - 1
        # Built in the reference's order (conv_in, embeddings, levels) so a seed gives the same init.
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], conv_in_kernel, padding=(conv_in_kernel - 1) // 2)
        time_embed_dim = self._build_embeddings(self.config)
        levels = _per_level(self.config)
        blocks_temb = time_embed_dim * 2 if class_embeddings_concat else time_embed_dim
        spec = BlockSpec(in_channels=0, out_channels=0, temb_channels=blocks_temb, num_layers=1, eps=norm_eps,
                         act_fn=act_fn, groups=norm_num_groups, time_scale_shift=resnet_time_scale_shift,
                         dropout=dropout, downsample_padding=downsample_padding,
                         use_linear_projection=use_linear_projection)
        self.down_blocks = nn.ModuleList(down_levels(spec, down_block_types, block_out_channels, levels["down"],
                                                     with_image=False))
        self.mid_block = _mid_block(spec, self.config, levels["mid"])
        self.up_blocks = nn.ModuleList(up_levels(spec, up_block_types, block_out_channels, levels["up"],
                                                 with_image=False))
        self.conv_norm_out = self.conv_act = None
        if norm_num_groups is not None:
            self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
            self.conv_act = get_activation(act_fn)
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, conv_out_kernel,
                                  padding=(conv_out_kernel - 1) // 2)

    def enable_freeu(self, s1: float, s2: float, b1: float, b2: float) -> None:
        """FreeU (Si et al., 2023) on the first two up levels; see `unet_blocks.freeu`."""
        for block in self.up_blocks:
            block.s1, block.s2, block.b1, block.b2 = s1, s2, b1, b2

    def disable_freeu(self) -> None:
        for block in self.up_blocks:
            block.s1 = block.s2 = block.b1 = block.b2 = None

    def _build_embeddings(self, config) -> int:
        """Time, class, added (SDXL) and text-projection embeddings; returns the time embedding width."""
        time_embed_dim, time_input_dim = _time_widths(config)
        if config.time_embedding_type == "fourier":
            self.time_proj = GaussianFourierProjection(time_embed_dim // 2, log=False, second_draw=False,
                                                       flip_sin_to_cos=config.flip_sin_to_cos)
        else:
            self.time_proj = Timesteps(config.block_out_channels[0], config.flip_sin_to_cos, config.freq_shift)
        self.time_embedding = TimestepEmbedding(time_input_dim, time_embed_dim, act_fn=config.act_fn,
                                                post_act_fn=config.timestep_post_act,
                                                cond_proj_dim=config.time_cond_proj_dim)
        self.encoder_hid_proj = None
        if config.encoder_hid_dim is not None:
            self.encoder_hid_proj = nn.Linear(config.encoder_hid_dim, config.cross_attention_dim)
        self.class_embedding = _class_embedding(config, time_input_dim, time_embed_dim)
        if config.addition_embed_type == "text_time":
            self.add_time_proj = Timesteps(config.addition_time_embed_dim, config.flip_sin_to_cos, config.freq_shift)
            self.add_embedding = TimestepEmbedding(config.projection_class_embeddings_input_dim, time_embed_dim)
        self.time_embed_act = get_activation(config.time_embedding_act_fn) if config.time_embedding_act_fn else None
        return time_embed_dim

    @scaled_by("cross_attention_kwargs")  # {"scale": s} scales the LoRA adapters, as in Diffusers
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        timestep_cond: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        down_block_additional_residuals: Sequence[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        down_intrablock_additional_residuals: Sequence[torch.Tensor] | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNetOutput | tuple:
        """Predict for a batch; the extra residuals are ControlNet's, added to skips and mid output.

        `down_intrablock_additional_residuals` are a T2I-Adapter's, added inside the down levels (and
        after the mid block when one matches its shape). As in Diffusers, `down_block_additional_residuals`
        given without `mid_block_additional_residual` are taken as a T2I-Adapter's (their legacy form).

        Args:
            timestep_cond: (B, time_cond_proj_dim) guidance embedding of LCM models.
            added_cond_kwargs: SDXL's `text_embeds` (B, pooled dim) and `time_ids` (B, 6).
            encoder_attention_mask: (B, M), 1 keeps a text token, 0 masks it out.
        """
        _check_attention_options(attention_mask)
        if self.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = self._embed(sample, timestep, timestep_cond, class_labels, added_cond_kwargs or {})
        context = self.encoder_hid_proj(encoder_hidden_states) if self.encoder_hid_proj is not None \
            else encoder_hidden_states
        mask = _mask_bias(encoder_attention_mask, sample.dtype)
        extra = {k: v for k, v in (cross_attention_kwargs or {}).items() if k != "scale"}  # scale: LoRA's
        if down_intrablock_additional_residuals is None and mid_block_additional_residual is None \
                and down_block_additional_residuals is not None:
            down_intrablock_additional_residuals = down_block_additional_residuals
            down_block_additional_residuals = None
        adapter = list(down_intrablock_additional_residuals or [])  # consumed front to back, a copy
        with processor_kwargs(extra):
            h, skips = self._down(self.conv_in(sample), emb, context, mask, down_block_additional_residuals, adapter)
            if self.mid_block is not None:
                h = self.mid_block(h, emb, context, mask)
                if adapter and adapter[0].shape == h.shape:  # T2I-Adapter-XL's last residual
                    h = h + adapter.pop(0)
            if mid_block_additional_residual is not None:
                h = h + mid_block_additional_residual
            h = self._up(h, skips, emb, context, mask, sample.shape[-2:])
        if self.conv_norm_out is not None:
            h = self.conv_act(self.conv_norm_out(h))
        h = self.conv_out(h)
        return UNetOutput(sample=h) if return_dict else (h,)

    def _embed(self, sample: torch.Tensor, timestep, timestep_cond: torch.Tensor | None,
               class_labels: torch.Tensor | None, added: dict[str, torch.Tensor]) -> torch.Tensor:
        """The conditioning vector (B, time_embed_dim) every resnet receives."""
        timesteps = timesteps_for_batch(timestep, sample.shape[0], sample.device)
        emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype), timestep_cond)
        if self.class_embedding is not None:
            class_emb = self._class_embed(class_labels, sample.dtype)
            emb = torch.cat([emb, class_emb], dim=-1) if self.config.class_embeddings_concat else emb + class_emb
        elif class_labels is not None:
            raise ValueError("class_labels were given but the model has no class embedding")
        if self.config.addition_embed_type == "text_time":
            emb = emb + self._text_time_embed(added, emb.dtype)
        return self.time_embed_act(emb) if self.time_embed_act is not None else emb

    def _class_embed(self, class_labels: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        if class_labels is None:
            raise ValueError(f"class_embed_type {self.config.class_embed_type!r} needs class_labels")
        if self.config.class_embed_type == "timestep":
            class_labels = self.time_proj(class_labels).to(dtype)
        return self.class_embedding(class_labels).to(dtype)

    def _text_time_embed(self, added: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        """SDXL: [pooled text (B, P), sinusoid(time_ids) (B, 6*D)] -> add_embedding MLP."""
        missing = [k for k in ("text_embeds", "time_ids") if k not in added]
        if missing:
            raise ValueError(f"addition_embed_type 'text_time' needs added_cond_kwargs {missing}")
        text_embeds, time_ids = added["text_embeds"], added["time_ids"]
        time_embeds = self.add_time_proj(time_ids.flatten()).reshape(text_embeds.shape[0], -1)
        return self.add_embedding(torch.cat([text_embeds, time_embeds], dim=-1).to(dtype))

    def _down(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None,
              residuals: Sequence[torch.Tensor] | None, adapter: list[torch.Tensor],
              ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Down levels; `adapter` (T2I-Adapter residuals, one per level while they last) is consumed."""
        skips = [h]
        for block in self.down_blocks:
            if block.attention == "cross":  # added inside the level, after its last attention
                h, block_skips = block(h, emb, context, mask, intrablock=adapter.pop(0) if adapter else None)
            else:
                h, block_skips = block(h, emb, context, mask)
                if adapter:  # added to the level's output, which is also its last skip (Diffusers adds in place)
                    h = h + adapter.pop(0)
                    block_skips = (*block_skips[:-1], h)
            skips.extend(block_skips)
        if residuals is not None:
            if len(residuals) != len(skips):
                raise ValueError(f"expected {len(skips)} down_block_additional_residuals, got {len(residuals)}")
            skips = [s + r for s, r in zip(skips, residuals)]
        return h, skips

    def _up(self, h: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor, context: torch.Tensor,
            mask: torch.Tensor | None, size: torch.Size) -> torch.Tensor:
        # Sizes that do not halve evenly: upsample each level to its skip's exact size.
        odd = any(s % 2 ** self.num_upsamplers for s in size)
        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            level_skips, skips = skips[-n:], skips[:-n]
            target = tuple(skips[-1].shape[2:]) if odd and i < len(self.up_blocks) - 1 else None
            h = block(h, level_skips, emb, context, mask, upsample_size=target)
        return h


def _check_attention_options(attention_mask: torch.Tensor | None) -> None:
    """A self-attention mask is not built (text masks go in `encoder_attention_mask`)."""
    if attention_mask is not None:
        raise ValueError("attention_mask (a self-attention mask) is not supported by this UNet; "
                         "mask text tokens with encoder_attention_mask")


def _mid_block(spec: BlockSpec, config, overrides: dict[str, Any]) -> nn.Module | None:
    name = config.mid_block_type
    if name is None:
        return None
    if name not in MID_LAYERS:
        raise ModelConfigError(f"unknown mid block type {name!r}; known: {sorted(MID_LAYERS)}")
    channels = config.block_out_channels[-1]
    mid = replace(spec, in_channels=channels, out_channels=channels, **overrides, num_layers=MID_LAYERS[name],
                  output_scale_factor=config.mid_block_scale_factor)
    return build_block(MID_BLOCKS, "mid", name, mid)


def _mask_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """(B, M) keep-mask -> (B, 1, M) additive bias: 0 to keep, -10000 to drop (as the reference)."""
    if mask is None:
        return None
    return ((1 - mask.to(dtype)) * -10000.0)[:, None, :]


def _time_widths(config) -> tuple[int, int]:
    """(time embedding width, width of the timestep features fed to it)."""
    base = config.block_out_channels[0]
    if config.time_embedding_type == "fourier":
        width = config.time_embedding_dim or base * 2
        if width % 2:
            raise ModelConfigError(f"fourier time_embedding_dim must be even, got {width}")
        return width, width
    if config.time_embedding_type == "positional":
        return config.time_embedding_dim or base * 4, base
    raise ModelConfigError(f"time_embedding_type {config.time_embedding_type!r} is not supported; "
                           "use 'positional' or 'fourier'")


def _class_embedding(config, time_input_dim: int, time_embed_dim: int) -> nn.Module | None:
    kind, projection_dim = config.class_embed_type, config.projection_class_embeddings_input_dim
    if kind is None:
        return nn.Embedding(config.num_class_embeds, time_embed_dim) if config.num_class_embeds else None
    if kind in ("projection", "simple_projection") and projection_dim is None:
        raise ModelConfigError(f"class_embed_type {kind!r} needs projection_class_embeddings_input_dim")
    builders = {
        "timestep": lambda: TimestepEmbedding(time_input_dim, time_embed_dim, act_fn=config.act_fn),
        "identity": nn.Identity,
        "projection": lambda: TimestepEmbedding(projection_dim, time_embed_dim),
        "simple_projection": lambda: nn.Linear(projection_dim, time_embed_dim),
    }
    if kind not in builders:
        raise ModelConfigError(f"class_embed_type {kind!r} is not supported; use None or one of {sorted(builders)}")
    return builders[kind]()


def _as_list(value: Any, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _per_level(config) -> dict[str, Any]:
    """Per-level overrides for down levels, the mid level and up levels (deepest first)."""
    n = len(config.down_block_types)
    heads = _as_list(config.num_attention_heads or config.attention_head_dim, n)
    head_dims = _as_list(config.attention_head_dim, n)
    cross = _as_list(config.cross_attention_dim, n)
    layers = _as_list(config.layers_per_block, n)
    depth = _as_list(config.transformer_layers_per_block, n)
    only_cross = _as_list(config.only_cross_attention, n)
    down = [dict(num_layers=layers[i], transformer_layers=depth[i], num_heads=heads[i],
                 cross_attention_dim=cross[i], only_cross_attention=only_cross[i], attention_head_dim=head_dims[i])
            for i in range(n)]
    up_depth = config.reverse_transformer_layers_per_block or depth[::-1]
    up = [dict(num_layers=layers[::-1][i] + 1, transformer_layers=up_depth[i], num_heads=heads[::-1][i],
               cross_attention_dim=cross[::-1][i], only_cross_attention=only_cross[::-1][i],
               attention_head_dim=head_dims[i])  # not reversed, as the reference does
          for i in range(n)]
    mid = dict(transformer_layers=depth[-1], num_heads=heads[-1], cross_attention_dim=cross[-1],
               attention_head_dim=head_dims[-1], add_attention=config.mid_block_type != "UNetMidBlock2D")
    return {"down": down, "mid": mid, "up": up}


# Features of the reference class this runtime does not build, and the value that disables each.
_UNSUPPORTED = {
    "dual_cross_attention": False,
    "attention_type": "default",
    "addition_embed_type": (None, "text_time"),
    "encoder_hid_dim_type": (None, "text_proj"),
}


def _check_config(config) -> None:
    """Refuse configs whose levels disagree or that need features not built here."""
    n = len(config.down_block_types)
    if len(config.up_block_types) != n or len(config.block_out_channels) != n:
        raise ModelConfigError(
            f"down_block_types ({n}), up_block_types ({len(config.up_block_types)}) and block_out_channels "
            f"({len(config.block_out_channels)}) must have the same length"
        )
    for key, allowed in _UNSUPPORTED.items():
        allowed = allowed if isinstance(allowed, tuple) else (allowed,)
        if config[key] not in allowed:
            raise ModelConfigError(f"{key}={config[key]!r} is not supported; allowed: {list(allowed)}")
    if config.addition_embed_type == "text_time" and not (
            config.addition_time_embed_dim and config.projection_class_embeddings_input_dim):
        raise ModelConfigError("addition_embed_type 'text_time' needs addition_time_embed_dim and "
                               "projection_class_embeddings_input_dim")
    for key in ("layers_per_block", "attention_head_dim", "cross_attention_dim", "only_cross_attention",
                "transformer_layers_per_block", "num_attention_heads"):
        if isinstance(config[key], (list, tuple)) and len(config[key]) != n:
            raise ModelConfigError(f"{key} has {len(config[key])} entries; the model has {n} levels")
