"""`SD3Transformer2DModel`: the MMDiT of Stable Diffusion 3 / 3.5, Diffusers' config keys and names.

Latents (B, C, H, W) are patchified with 2-D sin-cos positions (centre crop of a
`pos_embed_max_size` grid), pass `num_layers` joint blocks with the projected text tokens
(the last block reads the text only), and are unpatchified back to (B, out_channels, H, W).
SD3.5 adds per-head RMS q/k norms (`qk_norm="rms_norm"`) and, in `dual_attention_layers`, a
second self-attention on the image tokens (MMDiT-X). Timesteps are in [0, 1000] as given.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from worker.runtime.configuration import register_to_config
from worker.lora.mixin import scaled_by
from worker.models.mmdit_blocks import JointTransformerBlock, run_block
from worker.models.modeling import ModelMixin
from worker.models.normalization import QK_NORM_KINDS, AdaLayerNormContinuous
from worker.models.patch_embed import PatchEmbed
from worker.models.text_time_embeddings import CombinedTimestepTextProjEmbeddings
from worker.models.transformer_inputs import check_joint_attention_kwargs, require_inputs
from worker.models.transformer_outputs import Transformer2DModelOutput



class SD3Transformer2DModel(ModelMixin):
    """SD3 / SD3.5 transformer (defaults: SD3-medium's 2 B model, 18 blocks of 18 heads x 64)."""

    @register_to_config
    def __init__(
        self,
        sample_size: int = 128,
        patch_size: int = 2,
        in_channels: int = 16,
        num_layers: int = 18,
        attention_head_dim: int = 64,
        num_attention_heads: int = 18,
        joint_attention_dim: int = 4096,
        caption_projection_dim: int = 1152,
        pooled_projection_dim: int = 2048,
        out_channels: int = 16,
        pos_embed_max_size: int = 96,
        dual_attention_layers: Sequence[int] = (),
        qk_norm: str | None = None,
    ):
        super().__init__()
        if qk_norm not in QK_NORM_KINDS:
            raise ValueError(f"unsupported qk_norm {qk_norm!r}; supported: {list(QK_NORM_KINDS)}")
        self.out_channels = out_channels if out_channels is not None else in_channels
        self.inner_dim = dim = num_attention_heads * attention_head_dim
        self.pos_embed = PatchEmbed(sample_size, sample_size, patch_size, in_channels, dim,
                                    pos_embed_max_size=pos_embed_max_size)
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(dim, pooled_projection_dim)
        self.context_embedder = nn.Linear(joint_attention_dim, caption_projection_dim)
        self.transformer_blocks = nn.ModuleList([
            JointTransformerBlock(dim, num_attention_heads, attention_head_dim, qk_norm=qk_norm,
                                  context_pre_only=i == num_layers - 1, use_dual_attention=i in dual_attention_layers,
                                  init_order="sd3")
            for i in range(num_layers)
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
        block_controlnet_hidden_states: Sequence[torch.Tensor] | None = None,
        joint_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
        skip_layers: Sequence[int] | None = None,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Predict the flow velocity of latents.

        Args:
            hidden_states: latents (B, in_channels, H, W), H and W multiples of `patch_size`.
            encoder_hidden_states: CLIP + T5 tokens (B, M, joint_attention_dim).
            pooled_projections: pooled CLIP text (B, pooled_projection_dim).
            timestep: in [0, 1000], scalar or (B,).
            block_controlnet_hidden_states: ControlNet residuals spread over the blocks that output text.
            joint_attention_kwargs: `{"scale": s}` scales the LoRA adapters; other keys are refused.
            skip_layers: indices of blocks to skip (skip-layer guidance).
        """
        check_joint_attention_kwargs(joint_attention_kwargs)
        require_inputs("SD3Transformer2DModel", encoder_hidden_states=encoder_hidden_states,
                       pooled_projections=pooled_projections, timestep=timestep)
        H, W = hidden_states.shape[-2:]
        x = self.pos_embed(hidden_states)  # (B, h * w, D)
        temb = self.time_text_embed(timestep, pooled_projections)  # (B, D)
        c = self.context_embedder(encoder_hidden_states)  # (B, M, D)
        skip = set(skip_layers or ())
        for index, block in enumerate(self.transformer_blocks):
            if index not in skip:
                c, x = run_block(block, self.gradient_checkpointing, x, c, temb)
            if block_controlnet_hidden_states is not None and not block.context_pre_only:
                interval = len(self.transformer_blocks) / len(block_controlnet_hidden_states)
                x = x + block_controlnet_hidden_states[int(index / interval)]
        tokens = self.proj_out(self.norm_out(x, temb))  # (B, h * w, p * p * C)
        output = self.unpatchify(tokens, H, W)
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)

    def unpatchify(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, h * w, p * p * C) -> (B, C, h * p, w * p), channels last within each patch."""
        p, C = self.config.patch_size, self.out_channels
        h, w = height // p, width // p
        patches = tokens.reshape(tokens.shape[0], h, w, p, p, C)
        return patches.permute(0, 5, 1, 3, 2, 4).reshape(tokens.shape[0], C, h * p, w * p)
