"""SD3Transformer2DModel with `qk_norm="layer_norm"` (Diffusers accepts it; found by a parity fuzz)."""

from __future__ import annotations

import diffusers
import pytest
import torch

from worker.models import SD3Transformer2DModel

from .parity import rel_err, save

CONFIG = dict(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
              joint_attention_dim=12, caption_projection_dim=16, pooled_projection_dim=10, out_channels=4,
              pos_embed_max_size=12, qk_norm="layer_norm")


@pytest.mark.parametrize("dual_attention_layers", [(), (0,)])
def test_layer_norm_qk_norm_loads_and_matches(tmp_path, dual_attention_layers):
    config = dict(CONFIG, dual_attention_layers=dual_attention_layers)
    torch.manual_seed(0)
    reference = diffusers.SD3Transformer2DModel(**config).eval()
    with torch.no_grad():  # non-trivial affine parameters, so a missing or misnamed norm shows
        for name, p in reference.named_parameters():
            if ".norm_q." in name or ".norm_k." in name or "norm_added" in name:
                p.add_(torch.randn_like(p) * 0.3)
    ours = SD3Transformer2DModel.from_pretrained(save(reference, tmp_path)).eval()
    g = torch.Generator().manual_seed(1)
    inputs = dict(hidden_states=torch.randn(2, 4, 8, 12, generator=g),
                  encoder_hidden_states=torch.randn(2, 5, 12, generator=g),
                  pooled_projections=torch.randn(2, 10, generator=g), timestep=torch.tensor([900.0, 50.0]))
    with torch.no_grad():
        assert rel_err(ours(**inputs).sample, reference(**inputs).sample) < 1e-4


def test_unknown_qk_norm_is_refused_by_name():
    with pytest.raises(ValueError, match="qk_norm 'l2'"):
        SD3Transformer2DModel(**dict(CONFIG, qk_norm="l2"))
