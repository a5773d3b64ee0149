"""StableDiffusionXLPipeline: two text encoders, pooled embeds, time ids; parity with diffusers."""

from __future__ import annotations

import pytest

from tests.pipelines import tiny
from tests.pipelines.tiny import MAX_PIXEL_DIFF, max_diff, seeded
from worker.pipelines import DiffusionPipeline, StableDiffusionXLPipeline

ARGS = dict(num_inference_steps=2, output_type="np", height=32, width=32)


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    import diffusers

    folder = tmp_path_factory.mktemp("sdxl")
    tiny.tiny_sdxl_pipeline().save_pretrained(folder)
    ref = diffusers.StableDiffusionXLPipeline.from_pretrained(folder)
    return ref, DiffusionPipeline.from_pretrained(folder)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(prompt="a red cat"),  # force_zeros_for_empty_prompt: zero negative embeds
        dict(prompt="a red cat", negative_prompt="blurry", prompt_2="a photo of a cat"),
        dict(prompt=["a cat", "a dog"], num_images_per_prompt=2, height=48, guidance_rescale=0.5),
    ],
    ids=["zeros-negative", "negative-and-prompt-2", "batch-non-square"],
)
def test_sdxl_matches_diffusers(sdxl, kwargs):
    ref, pipe = sdxl
    assert type(pipe) is StableDiffusionXLPipeline
    assert pipe.config["force_zeros_for_empty_prompt"] is True
    args = {**ARGS, **kwargs}
    expected = ref(generator=seeded(7), **args).images
    got = pipe(generator=seeded(7), **args).images
    assert got.shape == expected.shape
    assert max_diff(got, expected) < MAX_PIXEL_DIFF


def test_sdxl_conditioning_carries_pooled_embeds_and_time_ids(sdxl):
    _, pipe = sdxl
    cond = pipe.encode_prompt("a cat", num_images_per_prompt=2, guided=True, negative_prompt="ugly")
    cond = pipe.add_time_ids(cond, (32, 48), (0, 0), (32, 48))
    assert cond.prompt_embeds.shape == (2, 77, 16)
    assert cond.added["text_embeds"].shape == (2, 8)
    assert cond.added["time_ids"].tolist() == [[32, 48, 0, 0, 32, 48]] * 2
    assert cond.negative_added["text_embeds"].abs().sum() > 0
    with pytest.raises(ValueError, match="pooled_prompt_embeds"):
        pipe.encode_prompt(None, prompt_embeds=cond.prompt_embeds)
