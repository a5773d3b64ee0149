"""`FluxTransformer2DModel`: the FLUX.1 rectified-flow transformer, Diffusers' config keys and names.

Packed latent tokens (B, N, in_channels) and T5 text tokens (B, M, joint_attention_dim) pass
`num_layers` double-stream blocks, then `num_single_layers` single-stream blocks on the joint
sequence, with 3-axis RoPE over the position ids [txt_ids; img_ids], conditioned on
timestep (+ guidance) + pooled CLIP text. Output: (B, N, patch_size^2 * out_channels).

Timesteps and guidance come in [0, 1] (sigmas) and are scaled by 1000 inside, as in Diffusers;
both may hold one value per row so rows of different jobs share a call.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from worker.runtime.configuration import register_to_config
from worker.lora.mixin import scaled_by
from worker.models.mmdit_blocks import JointTransformerBlock, SingleTransformerBlock, run_block
from worker.models.modeling import ModelMixin
from worker.models.normalization import AdaLayerNormContinuous
from worker.models.rope import RotaryPosEmbed
from worker.models.text_time_embeddings import CombinedTimestepTextProjEmbeddings
from worker.models.transformer_inputs import check_joint_attention_kwargs, require_inputs
from worker.models.transformer_outputs import Transformer2DModelOutput


class FluxTransformer2DModel(ModelMixin):
    """FLUX.1 [dev]/[schnell] transformer (defaults: the 12 B model, 19 + 38 blocks, 24 heads x 128)."""

    @register_to_config
    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 64,
        out_channels: int | None = None,
        num_layers: int = 19,
        num_single_layers: int = 38,
        attention_head_dim: int = 128,
        num_attention_heads: int = 24,
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int = 768,
        guidance_embeds: bool = False,
        axes_dims_rope: Sequence[int] = (16, 56, 56),
    ):
        super().__init__()
        if sum(axes_dims_rope) != attention_head_dim:
            raise ValueError(f"axes_dims_rope {tuple(axes_dims_rope)} must sum to attention_head_dim "
                             f"{attention_head_dim}")
        self.out_channels = out_channels or in_channels
        self.inner_dim = dim = num_attention_heads * attention_head_dim
        self.pos_embed = RotaryPosEmbed(axes_dims_rope, theta=10000)
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(dim, pooled_projection_dim, guidance_embeds)
        self.context_embedder = nn.Linear(joint_attention_dim, dim)
        self.x_embedder = nn.Linear(in_channels, dim)
        self.transformer_blocks = nn.ModuleList([
            JointTransformerBlock(dim, num_attention_heads, attention_head_dim, qk_norm=True, init_order="flux")
            for _ in range(num_layers)
        ])
        self.single_transformer_blocks = nn.ModuleList([
            SingleTransformerBlock(dim, num_attention_heads, attention_head_dim) for _ in range(num_single_layers)
        ])
        self.norm_out = AdaLayerNormContinuous(dim, dim, eps=1e-6)
        self.proj_out = nn.Linear(dim, patch_size * patch_size * self.out_channels)
        self.gradient_checkpointing = False  # set by enable_gradient_checkpointing (training)

    @scaled_by("joint_attention_kwargs")  # {"scale": s} scales the LoRA adapters, as in Diffusers
    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        img_ids: torch.Tensor | None = None,
        txt_ids: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
        controlnet_block_samples: Sequence[torch.Tensor] | None = None,
        controlnet_single_block_samples: Sequence[torch.Tensor] | None = None,
        return_dict: bool = True,
        controlnet_blocks_repeat: bool = False,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict the flow velocity of packed latents.

        Args:
            hidden_states: packed latents (B, N, in_channels).
            encoder_hidden_states: T5 tokens (B, M, joint_attention_dim).
            pooled_projections: pooled CLIP text (B, pooled_projection_dim).
            timestep: sigma in [0, 1], scalar or (B,).
            img_ids, txt_ids: position ids (N, 3) and (M, 3); a leading batch dim is accepted and its first
                entry used (the old form).
            guidance: guidance scale, scalar or (B,), required exactly when `guidance_embeds`.
            joint_attention_kwargs: `{"scale": s}` scales the LoRA adapters; other keys are refused.
            controlnet_block_samples, controlnet_single_block_samples: residuals added after the blocks.
            controlnet_blocks_repeat: cycle through the double-block residuals (XLabs ControlNets).
        """
        check_joint_attention_kwargs(joint_attention_kwargs)
        require_inputs("FluxTransformer2DModel", encoder_hidden_states=encoder_hidden_states,
                       pooled_projections=pooled_projections, timestep=timestep, img_ids=img_ids, txt_ids=txt_ids)
        x = self.x_embedder(hidden_states)  # (B, N, D)
        temb = self._conditioning(x.dtype, timestep, guidance, pooled_projections)  # (B, D)
        c = self.context_embedder(encoder_hidden_states)  # (B, M, D)
        rope = self.pos_embed(torch.cat([_ids_2d(txt_ids, "txt_ids"), _ids_2d(img_ids, "img_ids")], dim=0))
        for index, block in enumerate(self.transformer_blocks):
            c, x = run_block(block, self.gradient_checkpointing, x, c, temb, rope)
            x = _add_control(x, controlnet_block_samples, index, len(self.transformer_blocks),
                             controlnet_blocks_repeat)
        for index, block in enumerate(self.single_transformer_blocks):
            c, x = run_block(block, self.gradient_checkpointing, x, c, temb, rope)
            x = _add_control(x, controlnet_single_block_samples, index, len(self.single_transformer_blocks))
        output = self.proj_out(self.norm_out(x, temb))  # (B, N, p * p * out_channels)
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)

    def _conditioning(self, dtype: torch.dtype, timestep: torch.Tensor, guidance: torch.Tensor | None,
                      pooled: torch.Tensor) -> torch.Tensor:
        """temb (B, D) from sigmas and guidance in [0, 1]-units, scaled by 1000 in the model's dtype."""
        timestep = torch.as_tensor(timestep, device=pooled.device).to(dtype) * 1000
        if guidance is not None:
            guidance = torch.as_tensor(guidance, device=pooled.device).to(dtype) * 1000
        return self.time_text_embed(timestep, pooled, guidance)


def _ids_2d(ids: torch.Tensor, name: str) -> torch.Tensor:
    """(S, 3), or the old (B, S, 3) form (its first entry; all rows share positions) -> (S, 3)."""
    if ids.ndim == 3:
        return ids[0]
    if ids.ndim != 2:
        raise ValueError(f"{name} must have shape (seq, axes) or (batch, seq, axes); got {tuple(ids.shape)}")
    return ids


def _add_control(x: torch.Tensor, samples: Sequence[torch.Tensor] | None, index: int, num_blocks: int,
                 repeat: bool = False) -> torch.Tensor:
    """x + the ControlNet residual for block `index` (each residual serves ceil(blocks / residuals) blocks)."""
    if not samples:
        return x
    if repeat:
        return x + samples[index % len(samples)]
    return x + samples[index // math.ceil(num_blocks / len(samples))]
