"""Full-size SD 1.5 / SD 2.1 UNet and SD VAE architectures vs diffusers (random weights, tiny inputs).

One set of random weights per model: diffusers initialises it and ours takes the same tensors
(the UNets in memory, the VAE through a saved checkpoint), so init runs once.
"""

from __future__ import annotations

import diffusers
import pytest
import torch

from worker.models import AutoencoderKL, UNet2DConditionModel

from .parity import rel_err, save

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1,
)
SD21_UNET = dict(SD15_UNET, sample_size=96, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                 use_linear_projection=True, upcast_attention=True)
SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32,
    act_fn="silu", sample_size=512, scaling_factor=0.18215,
)


@pytest.mark.slow
@pytest.mark.parametrize("config", [SD15_UNET, SD21_UNET], ids=["sd15", "sd21"])
def test_full_size_unet(config):
    reference = diffusers.UNet2DConditionModel(**config).eval()
    with torch.device("meta"):
        ours = UNet2DConditionModel.from_config(reference.config)
    ours.load_weights(reference.state_dict())  # shares the tensors: no second copy
    ours.eval()
    sample = torch.randn(1, 4, 8, 8)
    timesteps = torch.tensor([500])
    context = torch.randn(1, 77, config["cross_attention_dim"])
    with torch.no_grad():
        expected = reference(sample, timesteps, context).sample
        actual = ours(sample, timesteps, context).sample
    assert rel_err(actual, expected) < 1e-4


@pytest.mark.slow
def test_full_size_vae(tmp_path):
    reference = diffusers.AutoencoderKL(**SD_VAE).eval()
    ours = AutoencoderKL.from_pretrained(save(reference, tmp_path))
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    latents = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert rel_err(ours.encode(images).latent_dist.mean, reference.encode(images).latent_dist.mean) < 1e-4
        assert rel_err(ours.decode(latents).sample, reference.decode(latents).sample) < 1e-4
