"""SD3Transformer2DModel vs diffusers' SD3Transformer2DModel on the same weights."""

from __future__ import annotations

import diffusers
import pytest
import torch

from worker.models import SD3Transformer2DModel

from .parity import rel_err, save

CONFIG = dict(sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=4,
              joint_attention_dim=32, caption_projection_dim=32, pooled_projection_dim=24, out_channels=4,
              pos_embed_max_size=12)
VARIANTS = {
    "sd3": CONFIG,
    "sd35-qk-norm": dict(CONFIG, qk_norm="rms_norm"),
    "sd35-mmdit-x": dict(CONFIG, qk_norm="rms_norm", dual_attention_layers=(0, 1)),
    "no-max-size": dict(CONFIG, pos_embed_max_size=None),
}
# SD3.5-large widths (38 heads x 64, T5 4096, pooled CLIP 2048, 192 x 192 position grid), two blocks,
# the first an MMDiT-X block so the dual attention runs at full width too.
FULL_WIDTH = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=64,
                  num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm",
                  dual_attention_layers=(0,))


def _inputs(config: dict, batch: int = 2, height: int = 8, width: int = 12, text_len: int = 6) -> dict:
    """Non-square latents (not the stored grid's shape: the centre crop is exercised), timesteps per row."""
    return dict(
        hidden_states=torch.randn(batch, config["in_channels"], height, width),
        encoder_hidden_states=torch.randn(batch, text_len, config["joint_attention_dim"]),
        pooled_projections=torch.randn(batch, config["pooled_projection_dim"]),
        timestep=torch.linspace(950.0, 120.0, batch),
    )


def _run(model, inputs: dict, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, **kwargs).sample


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_diffusers_checkpoint_loads_and_matches(tmp_path, name):
    config = VARIANTS[name]
    reference = diffusers.SD3Transformer2DModel(**config).eval()
    ours = SD3Transformer2DModel.from_pretrained(save(reference, tmp_path))
    inputs = _inputs(config, batch=3)
    assert rel_err(_run(ours, inputs), _run(reference, inputs)) < 1e-4
    if name != "no-max-size":  # a square input of the sample size as well
        square = _inputs(config, height=8, width=8)
        assert rel_err(_run(ours, square), _run(reference, square)) < 1e-4


def test_our_checkpoint_loads_in_diffusers(tmp_path):
    config = VARIANTS["sd35-mmdit-x"]
    ours = SD3Transformer2DModel(**config).eval()
    reference = diffusers.SD3Transformer2DModel.from_pretrained(save(ours, tmp_path)).eval()
    inputs = _inputs(config)
    assert rel_err(_run(ours, inputs), _run(reference, inputs)) < 1e-4


@pytest.mark.parametrize("name", ["sd3", "sd35-mmdit-x"])
def test_same_seed_gives_diffusers_init(name):
    torch.manual_seed(5)
    expected = diffusers.SD3Transformer2DModel(**VARIANTS[name]).state_dict()
    torch.manual_seed(5)
    actual = SD3Transformer2DModel(**VARIANTS[name]).state_dict()
    assert set(actual) == set(expected)
    assert all(torch.equal(actual[key], expected[key]) for key in expected)


def test_skip_layers_and_controlnet_residuals_match_diffusers(tmp_path):
    reference = diffusers.SD3Transformer2DModel(**CONFIG).eval()
    ours = SD3Transformer2DModel.from_pretrained(save(reference, tmp_path))
    inputs = _inputs(CONFIG)
    dim = CONFIG["num_attention_heads"] * CONFIG["attention_head_dim"]
    tokens = (CONFIG["sample_size"] // 2) * (12 // 2)
    controls = [torch.randn(2, tokens, dim) for _ in range(2)]
    for kwargs in (dict(skip_layers=[1]), dict(block_controlnet_hidden_states=controls)):
        assert rel_err(_run(ours, inputs, **kwargs), _run(reference, inputs, **kwargs)) < 1e-4


def test_rows_of_a_batch_are_independent():
    model = SD3Transformer2DModel(**VARIANTS["sd35-mmdit-x"]).eval()
    inputs = _inputs(CONFIG, batch=3)
    batched = _run(model, inputs)
    for row in range(3):
        alone = {k: v[row:row + 1] for k, v in inputs.items()}
        assert rel_err(_run(model, alone)[0], batched[row]) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_sharded_variant_checkpoint_loads_in_dtype(tmp_path, dtype):
    variant = "fp16" if dtype == torch.float16 else "bf16"
    reference = diffusers.SD3Transformer2DModel(**VARIANTS["sd35-qk-norm"]).eval().to(dtype)
    reference.save_pretrained(tmp_path, variant=variant, max_shard_size="20KB")
    assert len(list(tmp_path.glob(f"diffusion_pytorch_model.{variant}-*-of-*.safetensors"))) > 1
    ours = SD3Transformer2DModel.from_pretrained(tmp_path, variant=variant, torch_dtype=dtype)
    assert ours.dtype == dtype
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in reference.state_dict().items())
    assert SD3Transformer2DModel.from_pretrained(tmp_path, variant=variant).dtype == torch.float32
    half = {k: v.to(dtype) for k, v in _inputs(CONFIG).items()}
    assert rel_err(_run(ours, half).float(), _run(reference, half).float()) < 2e-2


def test_wrong_inputs_are_named():
    model = SD3Transformer2DModel(**CONFIG).eval()
    too_big = _inputs(CONFIG, height=26, width=8)  # 13 patches > pos_embed_max_size 12
    with pytest.raises(ValueError, match="pos_embed_max_size"):
        _run(model, too_big)
    with pytest.raises(ValueError, match="timestep"):
        _run(model, dict(_inputs(CONFIG), timestep=None))
    with pytest.raises(ValueError, match="qk_norm"):
        SD3Transformer2DModel(**dict(CONFIG, qk_norm="l2"))
    with pytest.raises(ValueError, match="joint_attention_kwargs"):
        _run(model, _inputs(CONFIG), joint_attention_kwargs={"ip_adapter_image_embeds": torch.zeros(1)})


@pytest.mark.slow
def test_full_width_sd35_large_matches_diffusers():
    reference = diffusers.SD3Transformer2DModel(**FULL_WIDTH).eval()
    with torch.device("meta"):
        ours = SD3Transformer2DModel.from_config(reference.config)
    ours.load_weights(reference.state_dict())  # shares the tensors: no second copy
    ours.eval()
    inputs = _inputs(FULL_WIDTH, batch=2, height=8, width=12, text_len=16)
    assert rel_err(_run(ours, inputs), _run(reference, inputs)) < 1e-4
