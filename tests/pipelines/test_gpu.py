"""CUDA half precision: the pipelines on a GPU against diffusers on the same GPU (skipped on CPU).

CPU generators with CUDA pipelines draw on the CPU and move the noise, so both sides see the
same numbers; fp16 rounding bounds the difference.
"""

from __future__ import annotations

import pytest
import torch

from tests.pipelines import tiny
from tests.pipelines.tiny import max_diff, seeded
from worker.pipelines import DiffusionPipeline, StableDiffusionInpaintPipeline

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
FP16_PIXEL_DIFF = 2e-2
ARGS = dict(num_inference_steps=3, height=32, width=32, output_type="np")


def pair(cls_name: str, folder, dtype=torch.float16):
    import diffusers

    ref = getattr(diffusers, cls_name).from_pretrained(folder, torch_dtype=dtype).to("cuda")
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype=dtype).to("cuda")
    return ref, pipe


def test_sd_fp16_cuda(sd_saved, rgb_image, mask_image):
    ref, pipe = pair("StableDiffusionPipeline", sd_saved[1])
    assert pipe.device.type == "cuda" and pipe.dtype == torch.float16
    expected = ref("a red cat", negative_prompt="ugly", generator=seeded(), **ARGS).images
    got = pipe("a red cat", negative_prompt="ugly", generator=seeded(), **ARGS).images
    assert max_diff(got, expected) < FP16_PIXEL_DIFF
    import diffusers

    ref_inpaint = diffusers.StableDiffusionInpaintPipeline(**ref.components)
    inpaint = StableDiffusionInpaintPipeline(**pipe.components)
    args = dict(prompt="a dog", image=rgb_image, mask_image=mask_image, strength=0.75, **ARGS)
    assert max_diff(inpaint(generator=seeded(1), **args).images, ref_inpaint(generator=seeded(1), **args).images) < FP16_PIXEL_DIFF


def test_sdxl_fp16_cuda_upcasts_vae(tmp_path):
    tiny.tiny_sdxl_pipeline().save_pretrained(tmp_path)
    ref, pipe = pair("StableDiffusionXLPipeline", tmp_path)
    expected = ref("a red cat", generator=seeded(), **ARGS).images
    got = pipe("a red cat", generator=seeded(), **ARGS).images
    assert max_diff(got, expected) < FP16_PIXEL_DIFF
    assert pipe.vae.dtype == torch.float16  # upcast only for the decode


def test_ddpm_fp16_cuda(ddpm_saved):
    ref, pipe = pair("DDPMPipeline", ddpm_saved[1])
    expected = ref(generator=seeded(), num_inference_steps=5, output_type="np").images
    got = pipe(generator=seeded(), num_inference_steps=5, output_type="np").images
    assert max_diff(got, expected) < FP16_PIXEL_DIFF
