"""UNet2DConditionModel with T2I-Adapter residuals, as Diffusers adds them (found by a parity fuzz).

`down_intrablock_additional_residuals` go inside the down levels (after the last attention of a
cross-attention level, onto the output of a plain one) and, when one is left with the mid block's
shape, after the mid block. `down_block_additional_residuals` without `mid_block_additional_residual`
is Diffusers' legacy spelling of the same thing; with it, they are ControlNet's skip residuals.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.pipelines.tiny import tiny_sd_unet
from worker.models import UNet2DConditionModel

from .parity import rel_err, save


@pytest.fixture(scope="module")
def unets(tmp_path_factory):
    reference = tiny_sd_unet()  # levels: DownBlock2D (4 ch, halves), CrossAttnDownBlock2D (8 ch); mid 8 ch
    with torch.no_grad():  # a non-zero output layer, so the residuals reach the prediction
        reference.conv_out.weight.normal_(0, 0.3)
    ours = UNet2DConditionModel.from_pretrained(save(reference, tmp_path_factory.mktemp("unet"))).eval()
    return reference, ours


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, 16, 16, generator=g), torch.tensor([900, 30]), torch.randn(2, 5, 8, generator=g)


def _residuals(shapes):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, *shape, generator=g) for shape in shapes]


def _both(unets, make_kwargs):
    reference, ours = unets
    x, t, context = _inputs()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference(x, t, context, **make_kwargs()).sample  # fresh lists: Diffusers pops them
        got = ours(x, t, context, **make_kwargs()).sample
        plain = ours(x, t, context).sample
    assert rel_err(got, plain) > 1e-3  # the residuals changed the prediction
    return got, expected


@pytest.mark.parametrize("with_mid", [False, True])
def test_intrablock_residuals_match_diffusers(unets, with_mid):
    shapes = [(4, 8, 8), (8, 8, 8)] + ([(8, 8, 8)] if with_mid else [])
    got, expected = _both(unets, lambda: {"down_intrablock_additional_residuals": _residuals(shapes)})
    assert rel_err(got, expected) < 1e-5


def test_down_residuals_without_mid_residual_are_adapter_residuals(unets):
    got, expected = _both(unets, lambda: {"down_block_additional_residuals": _residuals([(4, 8, 8), (8, 8, 8)])})
    assert rel_err(got, expected) < 1e-5


def test_controlnet_residuals_still_match(unets):
    skips = [(4, 16, 16), (4, 16, 16), (4, 8, 8), (8, 8, 8)]

    def kwargs():
        *down, mid = _residuals(skips + [(8, 8, 8)])
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}

    got, expected = _both(unets, kwargs)
    assert rel_err(got, expected) < 1e-5


def test_callers_lists_are_not_consumed(unets):
    residuals = _residuals([(4, 8, 8), (8, 8, 8)])
    x, t, context = _inputs()
    with torch.no_grad():
        unets[1](x, t, context, down_intrablock_additional_residuals=residuals)
    assert len(residuals) == 2
