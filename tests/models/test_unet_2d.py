"""UNet2DModel vs diffusers' UNet2DModel on the same weights (both load directions)."""

from __future__ import annotations

import diffusers
import pytest
import torch

from worker.models import UNet2DModel

from .parity import rel_err, save

BASE = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=8)

CONFIGS = {
    "attn-positional": dict(BASE, attention_head_dim=4, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                            up_block_types=("AttnUpBlock2D", "UpBlock2D")),
    "fourier-scale-shift": dict(BASE, layers_per_block=2, attention_head_dim=None, time_embedding_type="fourier",
                                down_block_types=("AttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "AttnUpBlock2D"),
                                resnet_time_scale_shift="scale_shift", center_input_sample=True),
    "no-mid-attention-class": dict(BASE, add_attention=False, num_class_embeds=5, freq_shift=1,
                                   flip_sin_to_cos=False, down_block_types=("DownBlock2D", "DownBlock2D"),
                                   up_block_types=("UpBlock2D", "UpBlock2D")),
}


def _inputs(config: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    sample = torch.randn(2, 3, 8, 8)
    fourier = config.get("time_embedding_type") == "fourier"
    timestep = torch.tensor([0.5, 20.0]) if fourier else torch.tensor([10, 700])
    extra = {"class_labels": torch.tensor([1, 3])} if "num_class_embeds" in config else {}
    return sample, timestep, extra


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_matches_diffusers(tmp_path, name):
    config = CONFIGS[name]
    reference = diffusers.UNet2DModel(**config).eval()
    ours = UNet2DModel.from_pretrained(save(reference, tmp_path))
    sample, timestep, extra = _inputs(config)
    with torch.no_grad():
        expected = reference(sample, timestep, **extra).sample
        actual = ours(sample, timestep, **extra).sample
    assert actual.shape == expected.shape == (2, 3, 8, 8)
    assert rel_err(actual, expected) < 1e-4


def test_round_trip_through_diffusers(tmp_path):
    ours = UNet2DModel(**CONFIGS["attn-positional"]).eval()
    reference = diffusers.UNet2DModel.from_pretrained(save(ours, tmp_path / "ours"))
    again = UNet2DModel.from_pretrained(save(reference, tmp_path / "theirs"))
    sample, timestep, _ = _inputs(CONFIGS["attn-positional"])
    with torch.no_grad():
        expected = ours(sample, timestep).sample
        assert rel_err(reference(sample, timestep).sample, expected) < 1e-4
        assert rel_err(again(sample, timestep).sample, expected) < 1e-5
    assert dict(again.config) == dict(ours.config)


@pytest.mark.parametrize("timestep", [10, 10.0, torch.tensor(10), torch.tensor([10]), torch.tensor([10, 10])])
def test_timestep_forms_agree(timestep):
    model = UNet2DModel(**CONFIGS["attn-positional"]).eval()
    sample = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(sample, torch.tensor([10, 10])).sample
        assert torch.allclose(model(sample, timestep).sample, expected, atol=1e-6)


def test_per_sample_timesteps_match_separate_calls():
    model = UNet2DModel(**CONFIGS["attn-positional"]).eval()
    sample = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        batched = model(sample, torch.tensor([3, 900])).sample
        first = model(sample[:1], 3).sample
        second = model(sample[1:], 900).sample
    assert torch.allclose(batched, torch.cat([first, second]), atol=1e-5)
    assert not torch.allclose(first, model(sample[:1], 900).sample, atol=1e-3)


def test_wrong_timestep_count_is_rejected():
    model = UNet2DModel(**CONFIGS["attn-positional"]).eval()
    with pytest.raises(ValueError, match="one value per sample"):
        model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2, 3]))
