"""AutoencoderKL vs diffusers' AutoencoderKL on the same weights."""

from __future__ import annotations

import diffusers
import pytest
import torch
from safetensors.torch import load_file, save_file

from worker.models import AutoencoderKL

from .parity import rel_err, save

CONFIG = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4, sample_size=16,
              down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
VARIANTS = {
    "sd": CONFIG,
    "no-quant-no-mid-attention": dict(CONFIG, use_quant_conv=False, use_post_quant_conv=False,
                                      mid_block_add_attention=False, scaling_factor=0.13025),
    "three-levels-two-layers": dict(CONFIG, block_out_channels=(8, 8, 16), layers_per_block=2,
                                    down_block_types=("DownEncoderBlock2D",) * 3,
                                    up_block_types=("UpDecoderBlock2D",) * 3),
}


@pytest.fixture
def pair(tmp_path):
    reference = diffusers.AutoencoderKL(**CONFIG).eval()
    return reference, AutoencoderKL.from_pretrained(save(reference, tmp_path))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_encode_decode_match_diffusers(tmp_path, name):
    reference = diffusers.AutoencoderKL(**VARIANTS[name]).eval()
    ours = AutoencoderKL.from_pretrained(save(reference, tmp_path))
    images = torch.randn(2, 3, 16, 24)
    latents = torch.randn(2, 4, 4, 6)
    with torch.no_grad():
        expected, actual = reference.encode(images).latent_dist, ours.encode(images).latent_dist
        assert rel_err(actual.mean, expected.mean) < 1e-4
        assert rel_err(actual.std, expected.std) < 1e-4
        assert rel_err(ours.decode(latents).sample, reference.decode(latents).sample) < 1e-4
        assert rel_err(ours(images).sample, reference(images).sample) < 1e-4
    assert ours.config.scaling_factor == reference.config.scaling_factor


def test_posterior_sample_draws_like_diffusers(pair):
    reference, ours = pair
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected, actual = reference.encode(images).latent_dist, ours.encode(images).latent_dist
    one = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    assert rel_err(actual.sample(one()), expected.sample(one())) < 1e-4
    many = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    assert rel_err(actual.sample(many()), expected.sample(many())) < 1e-4
    assert torch.equal(actual.mode(), actual.mean)
    assert actual.logvar.max() <= 20 and actual.logvar.min() >= -30


def test_slicing_matches_whole_batch(pair):
    _, ours = pair
    latents, images = torch.randn(3, 4, 4, 4), torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        whole, whole_mean = ours.decode(latents).sample, ours.encode(images).latent_dist.mean
        ours.enable_slicing()
        assert torch.allclose(ours.decode(latents).sample, whole, atol=1e-5)
        assert torch.allclose(ours.encode(images).latent_dist.mean, whole_mean, atol=1e-5)


def test_per_call_switches_leave_the_model_untouched(pair):
    _, ours = pair
    latents = torch.randn(2, 4, 10, 14)
    with torch.no_grad():
        plain = ours.decode(latents).sample
        sliced = ours.decode(latents, slicing=True).sample
        tiled = ours.decode(latents, tiling=True).sample
        ours.enable_tiling()
        assert torch.allclose(ours.decode(latents).sample, tiled, atol=1e-6)
        assert torch.allclose(ours.decode(latents, tiling=False).sample, plain, atol=1e-6)
    assert torch.allclose(sliced, plain, atol=1e-5)
    assert not torch.allclose(tiled, plain, atol=1e-3)


def test_tiling_matches_diffusers(pair):
    reference, ours = pair
    reference.enable_tiling()
    ours.enable_tiling()
    latents, images = torch.randn(1, 4, 10, 14), torch.randn(1, 3, 40, 56)  # tiles are 4 latents / 16 pixels
    with torch.no_grad():
        decoded, expected = ours.decode(latents).sample, reference.decode(latents).sample
        assert decoded.shape == expected.shape
        assert rel_err(decoded, expected) < 1e-4
        encoded = ours.encode(images).latent_dist.mean
        assert rel_err(encoded, reference.encode(images).latent_dist.mean) < 1e-4
        ours.disable_tiling()
        assert not torch.allclose(ours.decode(latents).sample, decoded, atol=1e-3)  # tiling really ran


def test_legacy_attention_names_load(tmp_path, pair):
    reference, _ = pair
    save(reference, tmp_path)
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    renames = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    for key in [k for k in state if "mid_block.attentions" in k]:
        for new, old in renames.items():
            if f".{new}." in key:
                state[key.replace(f".{new}.", f".{old}.")] = state.pop(key)
    save_file(state, path, metadata={"format": "pt"})
    ours = AutoencoderKL.from_pretrained(tmp_path)
    latents = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        assert rel_err(ours.decode(latents).sample, reference.decode(latents).sample) < 1e-4


def test_round_trip_through_diffusers(tmp_path):
    ours = AutoencoderKL(**CONFIG).eval()
    reference = diffusers.AutoencoderKL.from_pretrained(save(ours, tmp_path / "ours"))
    again = AutoencoderKL.from_pretrained(save(reference, tmp_path / "theirs"))
    latents = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        expected = ours.decode(latents).sample
        assert rel_err(reference.decode(latents).sample, expected) < 1e-4
        assert rel_err(again.decode(latents).sample, expected) < 1e-5
