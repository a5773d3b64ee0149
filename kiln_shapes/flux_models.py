"""Architectures of kiln-shapes-flux: a FLUX.1 [schnell]-style pipeline sized for a 2-core CPU.

`FluxTransformer2DModel` over the bundled kiln-shapes VAE's 16×16×4 latents (2×2 patches → 64
tokens of 16 channels), a CLIP text encoder for the pooled vector and a T5 encoder for the token
states, both trained from scratch. Presets: `small` (the shipped model) and `tiny` (tests of the
training code). No guidance embedding: FLUX.1 [dev]'s is distilled from a CFG teacher we do not have.
"""

from __future__ import annotations

from typing import Any

import torch

from kiln_shapes.models import build_text_encoder
from kiln_shapes.tokenizer import MAX_LENGTH as CLIP_MAX_LENGTH

TRANSFORMER_CONFIGS = {
    # 4 heads × 32 (RoPE axes id/row/column 8 + 12 + 12), 2 double-stream + 4 single-stream blocks.
    "small": dict(num_layers=2, num_single_layers=4, attention_head_dim=32, num_attention_heads=4,
                  axes_dims_rope=(8, 12, 12)),
    "tiny": dict(num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
                 axes_dims_rope=(2, 2, 4)),
}
T5_CONFIGS = {
    "small": dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
    "tiny": dict(d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2),
}
CLIP_PRESET = {"small": "small", "tiny": "tiny"}  # kiln_shapes.models.TEXT_CONFIGS preset of the CLIP encoder
LATENT_CHANNELS = 4  # the bundled kiln-shapes VAE
# Training draws sigma from a logit-normal (SD3, m = 0, s = 1) and applies this shift; the exported
# scheduler applies the same fixed shift to its sigma grid, so sampling spends its steps where
# training did (more of them at high noise, where colour, shape and place are decided).
SHIFT = 2.0
DEFAULT_STEPS = 8  # Euler steps the model is evaluated (and should be served) with; no CFG (guidance 1)


def build_transformer(preset: str, text_dim: int, pooled_dim: int) -> torch.nn.Module:
    """Kiln's `FluxTransformer2DModel` with adaLN-Zero initialisation (DiT, Peebles & Xie 2023):
    every block's modulation and the output projection start at zero, so each block starts as the
    identity and the first prediction is 0, which trains faster and more stably at this scale."""
    from worker.models import FluxTransformer2DModel
    from worker.models.normalization import AdaLayerNormZero

    model = FluxTransformer2DModel(
        patch_size=1, in_channels=LATENT_CHANNELS * 4, joint_attention_dim=text_dim,
        pooled_projection_dim=pooled_dim, guidance_embeds=False, **TRANSFORMER_CONFIGS[preset],
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, AdaLayerNormZero):
                module.linear.weight.zero_()
                module.linear.bias.zero_()
        model.proj_out.weight.zero_()
        model.proj_out.bias.zero_()
    return model


def build_t5_encoder(preset: str, vocab_size: int) -> Any:
    """A transformers `T5EncoderModel` (gated-GELU feed-forward, as T5 v1.1 and FLUX's T5-XXL)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=vocab_size, feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
                      relative_attention_max_distance=32, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                      dropout_rate=0.0, **T5_CONFIGS[preset])
    return T5EncoderModel(config)


def build_clip_encoder(preset: str, vocab_size: int) -> Any:
    """The CLIP text encoder whose pooled output conditions the transformer (kiln-shapes' sizes)."""
    return build_text_encoder(CLIP_PRESET[preset], vocab_size, CLIP_MAX_LENGTH)


def scheduler_config() -> dict[str, Any]:
    """`FlowMatchEulerDiscreteScheduler` with the training shift, fixed (64 image tokens lie far
    below the 256-4096 range FLUX's dynamic shift was fitted on)."""
    return dict(num_train_timesteps=1000, shift=SHIFT, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15,
                base_image_seq_len=256, max_image_seq_len=4096)


def shifted_sigmas(u: torch.Tensor, shift: float = SHIFT) -> torch.Tensor:
    """sigma = shift·s / (1 + (shift − 1)·s) for s = sigmoid(u): logit-normal then the scheduler's shift."""
    s = torch.sigmoid(u)
    return shift * s / (1.0 + (shift - 1.0) * s)
