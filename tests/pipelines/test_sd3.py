"""SD3 / SD3.5 pipelines: parity with diffusers on the same tiny weights (text-to-image, image-to-image,
without T5, SD3.5 transformer options, skip-layer guidance), and loading both ways."""

from __future__ import annotations

import pytest
import torch

from tests.pipelines import tiny_flow
from tests.pipelines.tiny import MAX_PIXEL_DIFF, max_diff, seeded
from worker.pipelines import DiffusionPipeline, StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline

ARGS = dict(num_inference_steps=2, output_type="np", height=32, width=32, max_sequence_length=16)


def kiln_from_pretrained(folder, cls=DiffusionPipeline, **kwargs):
    """Kiln's load of `folder`, with Kiln's own transformer and VAE (never diffusers' modules)."""
    pipe = cls.from_pretrained(folder, **kwargs)
    assert type(pipe.transformer).__module__.startswith("worker.models")
    assert type(pipe.vae).__module__.startswith("worker.models")
    return pipe


def _saved(tmp_path_factory, **options):
    import diffusers

    folder = tiny_flow.save_tiny_sd3(tmp_path_factory.mktemp("sd3"), **options)
    no_t5 = {} if options.get("with_t5", True) else dict(text_encoder_3=None, tokenizer_3=None)
    ref = diffusers.StableDiffusion3Pipeline.from_pretrained(folder, **no_t5)  # diffusers needs the Nones passed
    return ref, kiln_from_pretrained(folder)


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    """(diffusers SD3 pipeline, Kiln's load of the same folder)."""
    return _saved(tmp_path_factory)


@pytest.fixture(scope="module")
def sd35_no_t5(tmp_path_factory):
    """SD3.5-style transformer (RMS qk-norm, a dual-attention block), saved without T5."""
    return _saved(tmp_path_factory, sd35=True, with_t5=False)


CASES = {
    "plain": dict(prompt="a red cat"),
    "negatives-and-prompt-2-3": dict(prompt="a red cat", prompt_2="a photo", prompt_3="a painting of a cat",
                                     negative_prompt="ugly", negative_prompt_3="blurry", guidance_scale=5.0),
    "batch-non-square": dict(prompt=["a cat", "a dog"], num_images_per_prompt=2, height=48, width=32),
    "clip-skip-unguided": dict(prompt="a blue dog", clip_skip=1, guidance_scale=1.0),
    "custom-sigmas": dict(prompt="a cat", sigmas=[1.0, 0.7, 0.4], num_inference_steps=3),
}


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_sd3_matches_diffusers(sd3, kwargs):
    ref, pipe = sd3
    assert type(pipe) is StableDiffusion3Pipeline
    args = {**ARGS, **kwargs}
    expected = ref(generator=seeded(3), **args).images
    got = pipe(generator=seeded(3), **args).images
    assert got.shape == expected.shape
    assert max_diff(got, expected) < MAX_PIXEL_DIFF


def test_sd35_without_t5_matches_diffusers(sd35_no_t5):
    ref, pipe = sd35_no_t5
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    args = {**ARGS, "prompt": ["a cat", "a red dog"], "negative_prompt": ["ugly", "blurry"]}
    assert max_diff(pipe(generator=seeded(1), **args).images, ref(generator=seeded(1), **args).images) < MAX_PIXEL_DIFF
    cond = pipe.encode_conditioning("a cat", max_sequence_length=16)
    assert cond.prompt_embeds.shape == (1, 77 + 16, 32) and cond.prompt_embeds[:, 77:].abs().max() == 0


def test_sd3_skip_layer_guidance_matches_diffusers(sd3):
    ref, pipe = sd3
    args = {**ARGS, "prompt": "a cat", "num_inference_steps": 4, "skip_guidance_layers": [1],
            "skip_layer_guidance_stop": 0.9}
    got = pipe(generator=seeded(2), **args).images
    assert max_diff(got, ref(generator=seeded(2), **args).images) < MAX_PIXEL_DIFF
    plain = pipe(generator=seeded(2), **{**args, "skip_guidance_layers": None}).images
    assert max_diff(got, plain) > 1e-3


def test_sd3_embeds_latents_callback_and_output_types(sd3):
    ref, pipe = sd3
    embeds, negative, pooled, negative_pooled = ref.encode_prompt(
        "a red cat", None, None, negative_prompt="ugly", max_sequence_length=16)
    cond = pipe.encode_conditioning("a red cat", negative_prompt="ugly", max_sequence_length=16)
    assert torch.allclose(cond.prompt_embeds, embeds, atol=1e-5)
    assert torch.allclose(cond.negative_added["pooled_projections"], negative_pooled, atol=1e-5)
    seen = []

    def callback(_pipe, i, t, tensors):
        seen.append(sorted(tensors))
        return {"latents": tensors["latents"] * 0.9}

    args = {**ARGS, "prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "negative_prompt_embeds": negative,
            "negative_pooled_prompt_embeds": negative_pooled,
            "latents": torch.randn(1, 16, 16, 16, generator=seeded(5)),
            "callback_on_step_end": callback, "callback_on_step_end_tensor_inputs": ["latents", "pooled_prompt_embeds"]}
    expected = ref(**args).images
    assert max_diff(pipe(**args).images, expected) < MAX_PIXEL_DIFF
    assert seen[0] == ["latents", "pooled_prompt_embeds"] and len(seen) == 4  # 2 steps each, ours and diffusers'
    assert pipe(**{**args, "output_type": "latent"}).images.shape == (1, 16, 16, 16)
    with pytest.raises(ValueError, match="multiples of 4"):
        pipe(prompt="a cat", **{**ARGS, "height": 30})


def test_sd3_scheduler_swap_matches_diffusers(sd3):
    import diffusers

    import worker.schedulers

    heun = getattr(worker.schedulers, "FlowMatchHeunDiscreteScheduler", None)
    if heun is None:
        pytest.skip("Kiln has no FlowMatchHeunDiscreteScheduler yet")
    ref, pipe = sd3
    ref_heun = diffusers.StableDiffusion3Pipeline(
        **{**ref.components, "scheduler": diffusers.FlowMatchHeunDiscreteScheduler.from_config(ref.scheduler.config)})
    ours = StableDiffusion3Pipeline(**{**pipe.components, "scheduler": heun.from_config(pipe.scheduler.config)})
    args = {**ARGS, "prompt": "a cat", "num_inference_steps": 3}
    expected = ref_heun(generator=seeded(4), **args).images
    assert max_diff(ours(generator=seeded(4), **args).images, expected) < MAX_PIXEL_DIFF


@pytest.mark.parametrize(
    "kwargs",
    [dict(prompt="a red cat", strength=0.6, num_inference_steps=4),
     dict(prompt=["a cat", "a dog"], negative_prompt="ugly", num_images_per_prompt=2, strength=0.75,
          num_inference_steps=3, width=48)],
    ids=["strength-0.6", "batch-negative-non-square"],
)
def test_sd3_img2img_matches_diffusers(sd3, rgb_image, kwargs):
    import diffusers

    ref, pipe = sd3
    ref_img = diffusers.StableDiffusion3Img2ImgPipeline(**ref.components)
    ours = StableDiffusion3Img2ImgPipeline(**pipe.components)
    args = {**ARGS, "image": rgb_image, **kwargs}
    expected = ref_img(generator=seeded(6), **args).images
    got = ours(generator=seeded(6), **args).images
    assert got.shape == expected.shape
    assert max_diff(got, expected) < MAX_PIXEL_DIFF
    with pytest.raises(ValueError, match="needs an `image`"):
        ours(prompt="a cat", **ARGS)


def test_diffusers_loads_what_kiln_saved(sd35_no_t5, tmp_path):
    import diffusers

    ref, pipe = sd35_no_t5
    pipe.save_pretrained(tmp_path)
    again = diffusers.StableDiffusion3Pipeline.from_pretrained(tmp_path, text_encoder_3=None, tokenizer_3=None)
    assert again.text_encoder_3 is None
    args = {**ARGS, "prompt": "a dog"}
    assert max_diff(again(generator=seeded(4), **args).images, ref(generator=seeded(4), **args).images) < MAX_PIXEL_DIFF
    reloaded = kiln_from_pretrained(tmp_path, cls=StableDiffusion3Img2ImgPipeline)
    assert type(reloaded) is StableDiffusion3Img2ImgPipeline and reloaded.text_encoder_3 is None


@pytest.mark.parametrize("mu", [None, 0.8], ids=["mu-from-size", "mu-given"])
def test_sd3_dynamic_shifting_matches_diffusers(sd3, mu):
    import diffusers

    import worker.schedulers

    ref, pipe = sd3
    config = dict(tiny_flow.flux_scheduler().config)
    ref_dyn = diffusers.StableDiffusion3Pipeline(
        **{**ref.components, "scheduler": diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)})
    ours = StableDiffusion3Pipeline(
        **{**pipe.components, "scheduler": worker.schedulers.FlowMatchEulerDiscreteScheduler.from_config(config)})
    args = {**ARGS, "prompt": "a cat", "mu": mu, "height": 48}
    assert max_diff(ours(generator=seeded(5), **args).images, ref_dyn(generator=seeded(5), **args).images) \
        < MAX_PIXEL_DIFF
