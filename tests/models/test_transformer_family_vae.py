"""AutoencoderKL as FLUX and SD3 use it: 16 latent channels, no quant convs, `shift_factor`."""

from __future__ import annotations

import diffusers
import pytest
import torch

from worker.models import AutoencoderKL

from .parity import rel_err, save

# FLUX.1 / SD3 VAE configuration at tiny widths (real: block_out_channels (128, 256, 512, 512)).
FAMILIES = {
    "flux": dict(scaling_factor=0.3611, shift_factor=0.1159),
    "sd3": dict(scaling_factor=1.5305, shift_factor=0.0609),
}
BASE = dict(block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=16, sample_size=32,
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            use_quant_conv=False, use_post_quant_conv=False)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sixteen_channel_vae_with_shift_matches_diffusers(tmp_path, family):
    reference = diffusers.AutoencoderKL(**BASE, **FAMILIES[family]).eval()
    ours = AutoencoderKL.from_pretrained(save(reference, tmp_path))
    assert not any("quant_conv" in key for key in ours.state_dict())
    assert (ours.config.shift_factor, ours.config.scaling_factor) == (reference.config.shift_factor,
                                                                      reference.config.scaling_factor)
    images = torch.rand(2, 3, 16, 24) * 2 - 1
    with torch.no_grad():
        expected, actual = reference.encode(images).latent_dist, ours.encode(images).latent_dist
        assert actual.mean.shape == (2, 16, 4, 6)
        assert rel_err(actual.mean, expected.mean) < 1e-4 and rel_err(actual.std, expected.std) < 1e-4
        # The pipelines' latent normalisation: z = (x - shift) * scale, and back before decoding.
        scale, shift = ours.config.scaling_factor, ours.config.shift_factor
        latents = (actual.mean - shift) * scale
        decoded = ours.decode(latents / scale + shift).sample
        reference_decoded = reference.decode((expected.mean - shift) * scale / scale + shift).sample
    assert rel_err(decoded, reference_decoded) < 1e-4
