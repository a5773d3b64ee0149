"""UNet2DConditionModel vs diffusers on the same weights, one tiny config per model family."""

from __future__ import annotations

import diffusers
import pytest
import torch

from worker.models import ModelConfigError, UNet2DConditionModel

from .parity import rel_err, save

BASE = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12, attention_head_dim=2)
SDXL = dict(BASE, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), use_linear_projection=True,
            attention_head_dim=[2, 4], transformer_layers_per_block=[1, 2], cross_attention_dim=16,
            addition_embed_type="text_time", addition_time_embed_dim=4,
            projection_class_embeddings_input_dim=6 * 4 + 10)

FAMILIES = {
    "sd1": BASE,
    "sd2-linear-per-level-heads": dict(BASE, use_linear_projection=True, attention_head_dim=[2, 4],
                                       cross_attention_dim=16),
    "sdxl-text-time": SDXL,
    "lcm-time-cond": dict(BASE, time_cond_proj_dim=6),
    "inpaint-9ch": dict(BASE, in_channels=9),
    "class-timestep-mid-resnet": dict(BASE, class_embed_type="timestep", mid_block_type="UNetMidBlock2D",
                                      layers_per_block=[1, 2], only_cross_attention=[True, False]),
    "class-projection-scale-shift": dict(BASE, class_embed_type="projection",
                                         projection_class_embeddings_input_dim=5,
                                         resnet_time_scale_shift="scale_shift", time_embedding_act_fn="silu"),
}


def _inputs(config: dict, size: int = 8) -> tuple[tuple, dict]:
    sample = torch.randn(2, config.get("in_channels", 4), size, size)
    context = torch.randn(2, 5, config["cross_attention_dim"])
    kwargs: dict = {}
    if config.get("addition_embed_type") == "text_time":
        time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64], [32.0, 48, 8, 0, 64, 64]])
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 10), "time_ids": time_ids}
    if config.get("time_cond_proj_dim"):
        kwargs["timestep_cond"] = torch.randn(2, config["time_cond_proj_dim"])
    if config.get("class_embed_type") == "timestep":
        kwargs["class_labels"] = torch.tensor([3, 40])
    if config.get("class_embed_type") == "projection":
        kwargs["class_labels"] = torch.randn(2, 5)
    return (sample, torch.tensor([10, 700]), context), kwargs


def _compare(reference, ours, args, kwargs) -> float:
    with torch.no_grad():
        expected = reference(*args, **kwargs).sample
        actual = ours(*args, **kwargs).sample
    assert actual.shape == expected.shape
    return rel_err(actual, expected)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_matches_diffusers(tmp_path, family):
    config = FAMILIES[family]
    reference = diffusers.UNet2DConditionModel(**config).eval()
    ours = UNet2DConditionModel.from_pretrained(save(reference, tmp_path))
    args, kwargs = _inputs(config)
    assert _compare(reference, ours, args, kwargs) < 1e-4


def test_round_trip_through_diffusers(tmp_path):
    ours = UNet2DConditionModel(**SDXL).eval()
    reference = diffusers.UNet2DConditionModel.from_pretrained(save(ours, tmp_path / "ours"))
    again = UNet2DConditionModel.from_pretrained(save(reference, tmp_path / "theirs"))
    args, kwargs = _inputs(SDXL)
    assert _compare(reference, ours, args, kwargs) < 1e-4
    assert _compare(again, ours, args, kwargs) < 1e-5


def test_odd_latent_size_and_text_mask_match_diffusers(tmp_path):
    reference = diffusers.UNet2DConditionModel(**BASE).eval()
    ours = UNet2DConditionModel.from_pretrained(save(reference, tmp_path))
    args, _ = _inputs(BASE, size=7)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert _compare(reference, ours, args, {"encoder_attention_mask": mask}) < 1e-4


def test_controlnet_residuals_match_diffusers(tmp_path):
    reference = diffusers.UNet2DConditionModel(**BASE).eval()
    ours = UNet2DConditionModel.from_pretrained(save(reference, tmp_path))
    args, _ = _inputs(BASE)
    shapes = [(8, 8), (8, 8), (8, 4), (16, 4)]  # (channels, size) of each skip
    residuals = [torch.randn(2, c, s, s) for c, s in shapes]
    kwargs = {"down_block_additional_residuals": residuals,
              "mid_block_additional_residual": torch.randn(2, 16, 4, 4)}
    assert _compare(reference, ours, args, kwargs) < 1e-4


def test_per_sample_timesteps_equal_separate_calls():
    model = UNet2DConditionModel(**BASE).eval()
    (sample, _, context), _ = _inputs(BASE)
    with torch.no_grad():
        batched = model(sample, torch.tensor([5, 950]), context).sample
        first = model(sample[:1], torch.tensor(5), context[:1]).sample
        second = model(sample[1:], 950, context[1:]).sample
    assert torch.allclose(batched, torch.cat([first, second]), atol=1e-5)


def test_sdxl_without_added_cond_kwargs_is_rejected():
    model = UNet2DConditionModel(**SDXL).eval()
    (sample, timestep, context), _ = _inputs(SDXL)
    with pytest.raises(ValueError, match="time_ids"):
        model(sample, timestep, context, added_cond_kwargs={"text_embeds": torch.randn(2, 10)})


def test_num_attention_heads_key_means_heads():
    model = UNet2DConditionModel(**{**BASE, "num_attention_heads": 4, "attention_head_dim": 99})
    attention = model.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    assert attention.heads == 4


@pytest.mark.parametrize("override, message", [
    ({"mid_block_type": "UNetMidBlockFancy"}, "unknown mid block type"),
    ({"up_block_types": ("UpBlock2D", "SkipUpBlock2D")}, r"unknown up block type 'SkipUpBlock2D'; known"),
    ({"dual_cross_attention": True}, "dual_cross_attention"),
    ({"layers_per_block": [1, 1, 1]}, "layers_per_block has 3 entries"),
])
def test_unsupported_configs_are_clear_errors(override, message):
    with pytest.raises(ModelConfigError, match=message):
        UNet2DConditionModel(**{**BASE, **override})
