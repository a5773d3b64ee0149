"""`enable_layerwise_casting` (issue 18): weights stored narrow, each layer computed wide.

The contract Diffusers code relies on: castable layers (Linear / Conv / Embedding) outside the
skipped names hold their weights in the storage dtype before and after a forward call; norms and
the projections named by the skip patterns keep theirs; `model.dtype` reports the compute dtype (the
dtype inputs are cast to); and the numbers equal Diffusers' on the same weights and settings.
"""

from __future__ import annotations

import re

import diffusers
import pytest
import torch

from worker.models import AutoencoderKL, UNet2DConditionModel, UNet2DModel
from worker.models.layerwise_casting import CASTABLE_LAYERS, DEFAULT_SKIP_PATTERNS

UNET_COND = dict(block_out_channels=(4, 8), norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=2,
                 layers_per_block=1, sample_size=16)
UNET_2D = dict(block_out_channels=(4, 8), norm_num_groups=2, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
               up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=3, layers_per_block=1, sample_size=16)
VAE = dict(block_out_channels=(2, 4), down_block_types=("DownEncoderBlock2D",) * 2,
           up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=2)


def unet_cond_inputs():
    g = torch.Generator().manual_seed(1)
    return dict(sample=torch.randn(2, 4, 16, 16, generator=g), timestep=torch.tensor(7),
                encoder_hidden_states=torch.randn(2, 3, 8, generator=g))


def unet_2d_inputs():
    g = torch.Generator().manual_seed(1)
    return dict(sample=torch.randn(2, 3, 16, 16, generator=g), timestep=torch.tensor(7))


def vae_inputs():
    return dict(sample=torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)))


CASES = [(UNet2DConditionModel, UNET_COND, unet_cond_inputs), (UNet2DModel, UNET_2D, unet_2d_inputs),
         (AutoencoderKL, VAE, vae_inputs)]
IDS = ["unet-cond", "unet-2d", "vae"]


def layer_dtypes(model) -> dict[str, torch.dtype]:
    """Weight dtype of every castable layer, by dotted name."""
    return {name: m.weight.dtype for name, m in model.named_modules() if isinstance(m, CASTABLE_LAYERS)}


def skipped(name: str, model) -> bool:
    patterns = DEFAULT_SKIP_PATTERNS + tuple(model._skip_layerwise_casting_patterns or ())
    return any(re.search(p, name) for p in patterns)


@pytest.mark.parametrize("cls,config,inputs", CASES, ids=IDS)
def test_weights_stay_in_storage_dtype_around_a_forward_call(cls, config, inputs):
    model = cls(**config).eval()
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert model.dtype == torch.float32
    with torch.no_grad():
        out = model(**inputs()).sample
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    dtypes = layer_dtypes(model)
    assert any(d == torch.float8_e4m3fn for d in dtypes.values())
    for name, dtype in dtypes.items():
        assert dtype == (torch.float32 if skipped(name, model) else torch.float8_e4m3fn), name
    norms = [m for m in model.modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm))]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)


@pytest.mark.parametrize("cls,config,inputs", CASES, ids=IDS)
def test_same_numbers_as_diffusers_with_the_same_casting(cls, config, inputs):
    """fp16 storage, fp32 compute: Kiln and Diffusers round the same weights the same way."""
    model = cls(**config).eval()
    reference = getattr(diffusers, cls.__name__)(**config).eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        full_precision = model(**inputs()).sample
    for m in (model, reference):
        m.enable_layerwise_casting(storage_dtype=torch.float16, compute_dtype=torch.float32)
    with torch.no_grad():
        ours, theirs = model(**inputs()).sample, reference(**inputs()).sample
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert not torch.equal(full_precision, ours)  # the storage rounding is real


def test_training_under_autocast_as_in_diffusers():
    """A backward pass through cast layers works under autocast (the cast copies are what autograd
    keeps), as Diffusers' own layerwise-casting training test runs it."""
    model = UNet2DConditionModel(**UNET_COND).train()
    model.enable_layerwise_casting(storage_dtype=torch.float16, compute_dtype=torch.float32)
    with torch.amp.autocast(device_type="cpu"):
        loss = model(**unet_cond_inputs()).sample.float().square().mean()
    loss.backward()
    assert model.conv_in.weight.dtype == torch.float16
