"""Diffusers' `padding_mask_crop` keyword on the inpainting pipelines: its default (None) is accepted
in Diffusers' position (a parity fuzz found it refused as an unknown keyword). Crop sizes:
tests/pipelines/test_padding_mask_crop.py."""

from __future__ import annotations

import inspect

import diffusers
import numpy as np
import pytest
from PIL import Image

from tests.pipelines import tiny, tiny_flow
from tests.pipelines.tiny import MAX_PIXEL_DIFF, max_diff, seeded
from worker.pipelines import FluxInpaintPipeline, StableDiffusionInpaintPipeline

PAIRS = [(StableDiffusionInpaintPipeline, diffusers.StableDiffusionInpaintPipeline),
         (FluxInpaintPipeline, diffusers.FluxInpaintPipeline)]


def _image_and_mask(size: int = 32):
    image = Image.fromarray(np.random.RandomState(0).randint(0, 255, (size, size, 3), dtype=np.uint8))
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[8:24, 12:] = 255
    return image, Image.fromarray(mask)


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_padding_mask_crop_sits_where_diffusers_has_it(ours, theirs):
    def names(cls):
        params = list(inspect.signature(cls.__call__).parameters)
        return params[:params.index("padding_mask_crop") + 1]

    assert names(ours) == names(theirs)


@pytest.fixture(scope="module")
def sd_inpaint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd-inpaint")
    tiny.tiny_sd_pipeline(in_channels=9, inpaint=True).save_pretrained(folder)
    ours = StableDiffusionInpaintPipeline.from_pretrained(folder)
    return diffusers.StableDiffusionInpaintPipeline.from_pretrained(folder), ours


def test_sd_inpaint_with_padding_mask_crop_none_matches_diffusers(sd_inpaint):
    ref, pipe = sd_inpaint
    image, mask = _image_and_mask()
    args = dict(prompt="a cat", image=image, mask_image=mask, padding_mask_crop=None, num_inference_steps=2,
                output_type="np")
    assert max_diff(pipe(generator=seeded(0), **args).images, ref(generator=seeded(0), **args).images) < MAX_PIXEL_DIFF


def test_flux_inpaint_accepts_padding_mask_crop_none(tmp_path):
    tiny_flow.tiny_flux_pipeline(task="inpaint").save_pretrained(tmp_path)
    ref = diffusers.FluxInpaintPipeline.from_pretrained(tmp_path)
    pipe = FluxInpaintPipeline.from_pretrained(tmp_path)
    image, mask = _image_and_mask()
    args = dict(prompt="a cat", image=image, mask_image=mask, padding_mask_crop=None, height=32, width=32,
                num_inference_steps=2, max_sequence_length=16, output_type="np")
    assert max_diff(pipe(generator=seeded(1), **args).images, ref(generator=seeded(1), **args).images) < MAX_PIXEL_DIFF
    with pytest.raises(ValueError, match="padding_mask_crop=8"):
        pipe(**dict(args, padding_mask_crop=8))
