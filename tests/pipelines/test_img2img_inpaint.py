"""Image-to-image and inpainting (9- and 4-channel UNets): parity with diffusers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.pipelines import tiny
from tests.pipelines.tiny import MAX_PIXEL_DIFF, max_diff, seeded
from worker.pipelines import (
    DiffusionPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
)

STEPS = dict(num_inference_steps=4, output_type="np")


def test_img2img_shares_components_and_matches_diffusers(sd_saved, sd_pipe, rgb_image):
    import diffusers

    ref = diffusers.StableDiffusionImg2ImgPipeline(**sd_saved[0].components)
    pipe = StableDiffusionImg2ImgPipeline(**sd_pipe.components)
    assert pipe.unet is sd_pipe.unet and pipe.vae is sd_pipe.vae and pipe.scheduler is sd_pipe.scheduler
    args = dict(prompt="a red cat", image=rgb_image, strength=0.6, **STEPS)
    expected = ref(generator=seeded(1), **args).images
    got = pipe(generator=seeded(1), **args).images
    assert got.shape == (1, 32, 32, 3)
    assert max_diff(got, expected) < MAX_PIXEL_DIFF


def test_img2img_generator_list_and_tensor_input(sd_saved, sd_pipe, rgb_image):
    import diffusers

    ref = diffusers.StableDiffusionImg2ImgPipeline(**sd_saved[0].components)
    pipe = StableDiffusionImg2ImgPipeline(**sd_pipe.components)
    image = torch.from_numpy(np.asarray(rgb_image, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    args = dict(prompt="a dog", image=image, strength=0.5, num_images_per_prompt=2, **STEPS)
    expected = ref(generator=[seeded(3), seeded(4)], **args).images
    got = pipe(generator=[seeded(3), seeded(4)], **args).images
    assert got.shape == (2, 32, 32, 3)
    assert max_diff(got, expected) < MAX_PIXEL_DIFF


def test_img2img_rejects_bad_strength(sd_pipe, rgb_image):
    pipe = StableDiffusionImg2ImgPipeline(**sd_pipe.components)
    with pytest.raises(ValueError, match="strength"):
        pipe(prompt="a cat", image=rgb_image, strength=1.5)
    with pytest.raises(ValueError, match="no step"):
        pipe(prompt="a cat", image=rgb_image, strength=0.1, num_inference_steps=2)


@pytest.fixture(scope="module")
def inpaint9_saved(tmp_path_factory):
    ref = tiny.tiny_sd_pipeline(in_channels=9, inpaint=True)
    folder = tmp_path_factory.mktemp("inpaint9")
    ref.save_pretrained(folder)
    return ref, folder


@pytest.mark.parametrize("strength", [1.0, 0.75])
def test_inpaint_9_channel_matches_diffusers(inpaint9_saved, rgb_image, mask_image, strength):
    ref, folder = inpaint9_saved
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert type(pipe) is StableDiffusionInpaintPipeline
    args = dict(prompt="a red cat", image=rgb_image, mask_image=mask_image, strength=strength, **STEPS)
    expected = ref(generator=seeded(2), **args).images
    got = pipe(generator=seeded(2), **args).images
    assert max_diff(got, expected) < MAX_PIXEL_DIFF


def test_inpaint_4_channel_blends_known_region_like_diffusers(sd_saved, sd_pipe, rgb_image, mask_image):
    import diffusers

    ref = diffusers.StableDiffusionInpaintPipeline(**sd_saved[0].components)
    pipe = StableDiffusionInpaintPipeline(**sd_pipe.components)
    args = dict(prompt="a blue dog", negative_prompt="ugly", image=rgb_image, mask_image=mask_image, **STEPS)
    expected = ref(generator=seeded(5), **args).images
    got = pipe(generator=seeded(5), **args).images
    assert max_diff(got, expected) < MAX_PIXEL_DIFF


def test_inpaint_needs_image_and_mask(sd_pipe, rgb_image):
    pipe = StableDiffusionInpaintPipeline(**sd_pipe.components)
    with pytest.raises(ValueError, match="mask_image"):
        pipe(prompt="a cat", image=rgb_image)
