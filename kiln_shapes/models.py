"""Architectures of kiln-shapes: configs of the VAE, CLIP text encoder, UNet and noise schedule.

Presets: `full` (16x16x4 latents of 64x64 images, 5.8 M-parameter UNet), `small` (a quarter of
the compute, for a 2-core CPU) and `tiny` (a few thousand parameters, for tests of the training code). All are standard Stable Diffusion
components, so the result loads in Kiln and in Diffusers.
"""

from __future__ import annotations

from typing import Any

import torch

from worker.models import AutoencoderKL, UNet2DConditionModel

VAE_CONFIGS = {
    "full": dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16, latent_channels=4),
    "small": dict(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8, latent_channels=4),
    "tiny": dict(block_out_channels=(8, 8, 8), layers_per_block=1, norm_num_groups=4, latent_channels=4),
}
UNET_CONFIGS = {
    "full": dict(block_out_channels=(64, 128, 128), layers_per_block=1, attention_head_dim=8,
                 norm_num_groups=32, cross_attention_dim=64),
    "small": dict(block_out_channels=(32, 64, 64), layers_per_block=1, attention_head_dim=4,
                  norm_num_groups=16, cross_attention_dim=64),
    "tiny": dict(block_out_channels=(8, 16, 16), layers_per_block=1, attention_head_dim=2,
                 norm_num_groups=4, cross_attention_dim=16),
}
TEXT_CONFIGS = {
    "full": dict(hidden_size=64, intermediate_size=256, num_attention_heads=4, num_hidden_layers=2),
    "small": dict(hidden_size=64, intermediate_size=256, num_attention_heads=4, num_hidden_layers=2),
    "tiny": dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1),
}
# DDPM's linear schedule (Ho et al. 2020) with v-prediction (Salimans & Ho 2022). Why not SD 1.x's
# scaled-linear betas: they leave sqrt(alpha_bar_T) = 0.068 of the image at t = T, and on 16x16
# latents that leak is larger than the noise's own spatial mean, so the model learns to read the
# background and layout from the noise and ignores the prompt (Lin et al. 2024, "Common diffusion
# noise schedules and sample steps are flawed"). Linear betas leave 0.006. v-prediction weights the
# x0 error ~1 at high noise, where colour, shape and place are decided; epsilon prediction
# weights it by the SNR, ~0 there, and learns the prompt far more slowly.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                prediction_type="v_prediction")


def build_vae(preset: str) -> AutoencoderKL:
    """An `AutoencoderKL` with 3 levels (latents 4x smaller than the image)."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, sample_size=64, **VAE_CONFIGS[preset],
    )


def build_unet(preset: str) -> UNet2DConditionModel:
    """A 3-level `UNet2DConditionModel` with cross-attention at the two finest levels."""
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), **UNET_CONFIGS[preset],
    )


def build_text_encoder(preset: str, vocab_size: int, max_length: int) -> Any:
    """A transformers `CLIPTextModel` (BOS 0, EOS = pad 1) sized by `preset`."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size, max_position_embeddings=max_length, bos_token_id=0, eos_token_id=1,
        pad_token_id=1, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=TEXT_CONFIGS[preset]["hidden_size"],
        **TEXT_CONFIGS[preset],
    )
    return CLIPTextModel(config)


def scheduler_config() -> dict[str, Any]:
    """`scheduler_config.json` contents: DPM-Solver++ 2M on the training schedule."""
    return dict(SCHEDULE, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="linspace",
                steps_offset=1,
                # Kept for the schedulers a client may switch to (as SD's config does): DDIM's default
                # clip_sample=True clips x0 to [-1, 1], which ruins unit-variance latents.
                clip_sample=False, set_alpha_to_one=False)


def alphas_cumprod() -> torch.Tensor:
    """(1000,) cumulative products of 1 - beta for the training schedule (linear betas)."""
    start, end, n = SCHEDULE["beta_start"], SCHEDULE["beta_end"], SCHEDULE["num_train_timesteps"]
    betas = torch.linspace(start, end, n, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0).float()
