"""CUDA checks: half-precision loading and inference match diffusers on the same device."""

from __future__ import annotations

import diffusers
import pytest
import torch

from worker.models import AutoencoderKL, UNet2DConditionModel

from .parity import rel_err
from .test_autoencoder_kl import CONFIG as VAE_CONFIG
from .test_unet_2d_condition import SDXL

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_fp16_variant_on_cuda_matches_diffusers(tmp_path):
    reference = diffusers.UNet2DConditionModel(**SDXL).eval()
    reference.half().save_pretrained(tmp_path, variant="fp16")
    reference = reference.to("cuda")
    ours = UNet2DConditionModel.from_pretrained(tmp_path, variant="fp16", torch_dtype=torch.float16).to("cuda")
    assert ours.dtype == torch.float16 and ours.device.type == "cuda"
    sample = torch.randn(2, 4, 16, 16, device="cuda", dtype=torch.float16)
    context = torch.randn(2, 5, 16, device="cuda", dtype=torch.float16)
    added = {"text_embeds": torch.randn(2, 10, device="cuda", dtype=torch.float16),
             "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2, device="cuda")}
    timesteps = torch.tensor([900, 20], device="cuda")
    with torch.no_grad():
        expected = reference(sample, timesteps, context, added_cond_kwargs=added).sample
        actual = ours(sample, timesteps, context, added_cond_kwargs=added).sample
    assert actual.dtype == torch.float16
    assert rel_err(actual.float(), expected.float()) < 1e-2


def test_vae_sample_on_cuda_with_cpu_generator_matches_diffusers(tmp_path):
    reference = diffusers.AutoencoderKL(**VAE_CONFIG).eval()
    reference.save_pretrained(tmp_path)
    reference = reference.to("cuda")
    ours = AutoencoderKL.from_pretrained(tmp_path).to("cuda")
    images = torch.randn(2, 3, 32, 32, device="cuda")
    with torch.no_grad():
        expected = reference.encode(images).latent_dist.sample(torch.Generator().manual_seed(5))
        actual = ours.encode(images).latent_dist.sample(torch.Generator().manual_seed(5))
        assert rel_err(actual, expected) < 1e-3
        latents = torch.randn(1, 4, 8, 8, device="cuda", dtype=torch.float32)
        assert rel_err(ours.decode(latents).sample, reference.decode(latents).sample) < 1e-3
