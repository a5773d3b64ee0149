"""StableDiffusionPipeline text-to-image: parity with diffusers on the same tiny weights and seeds."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from tests.pipelines.tiny import MAX_PIXEL_DIFF, max_diff, seeded
from worker.pipelines import Conditioning, StableDiffusionPipeline

BASE = dict(num_inference_steps=2, output_type="np", height=32, width=32)


def both(ref, pipe, seed=0, **kwargs):
    args = {**BASE, **kwargs}
    gens = args.pop("generators", None)
    expected = ref(generator=gens() if gens else seeded(seed), **args).images
    got = pipe(generator=gens() if gens else seeded(seed), **args).images
    return expected, got


def test_loads_components_as_kiln_classes(sd_pipe):
    assert type(sd_pipe) is StableDiffusionPipeline
    names = {k: type(v).__name__ for k, v in sd_pipe.components.items()}
    assert names["unet"] == "UNet2DConditionModel" and names["vae"] == "AutoencoderKL"
    assert type(sd_pipe.unet).__module__.startswith("worker.models")
    assert names["safety_checker"] == "NoneType"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(prompt="a red cat"),
        dict(prompt="a red cat", negative_prompt="blurry"),
        dict(prompt="a photo of a dog", height=32, width=48),
        dict(prompt="a cat", guidance_scale=1.0),
        dict(prompt="a cat", guidance_rescale=0.7),
        dict(prompt="a cat", eta=0.8),
        dict(prompt="a dog", latents=torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(9))),
    ],
    ids=["plain", "negative", "non-square", "unguided", "rescale", "ddim-eta", "given-latents"],
)
def test_txt2img_matches_diffusers(sd_saved, sd_pipe, kwargs):
    expected, got = both(sd_saved[0], sd_pipe, **kwargs)
    assert got.shape == expected.shape
    assert max_diff(got, expected) < MAX_PIXEL_DIFF


def test_clip_skip_uses_an_earlier_layer_through_the_final_norm(sd_saved, sd_pipe):
    # diffusers 0.42's own clip_skip path expects transformers 4's `.text_model`; compare on embeddings.
    encoder, tokenizer = sd_pipe.text_encoder, sd_pipe.tokenizer
    ids = tokenizer(["a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = encoder(ids, output_hidden_states=True).hidden_states
        expected = encoder.final_layer_norm(hidden[-2])
        got = sd_pipe.encode_prompt("a cat", guided=False, clip_skip=1).prompt_embeds
        default = sd_pipe.encode_prompt("a cat", guided=False).prompt_embeds
    assert torch.allclose(got, expected) and not torch.allclose(got, default)
    expected_img, got_img = both(sd_saved[0], sd_pipe, prompt_embeds=got, guidance_scale=1.0)
    assert max_diff(got_img, expected_img) < MAX_PIXEL_DIFF


def test_batch_of_prompts_with_generator_list(sd_saved, sd_pipe):
    gens = lambda: [seeded(s) for s in range(4)]  # noqa: E731
    expected, got = both(
        sd_saved[0], sd_pipe, prompt=["a red cat", "a blue dog"], negative_prompt=["ugly", "blurry"],
        num_images_per_prompt=2, generators=gens,
    )
    assert got.shape == (4, 32, 32, 3)
    assert max_diff(got, expected) < MAX_PIXEL_DIFF
    # one generator per image: image 3 alone with seed 3 is the same image
    alone = sd_pipe(prompt="a blue dog", negative_prompt="blurry", generator=seeded(3), **BASE).images
    assert max_diff(alone[0], got[3]) < 1e-4


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "DPMSolverMultistepScheduler"])
def test_swapped_scheduler_matches_diffusers(sd_saved, sd_pipe, name):
    import diffusers

    from worker import schedulers

    ref = diffusers.StableDiffusionPipeline.from_pretrained(sd_saved[1])  # configs as read from disk
    ref_swapped = type(ref)(**{**ref.components, "scheduler": getattr(diffusers, name).from_config(ref.scheduler.config)})
    ours = StableDiffusionPipeline(**{**sd_pipe.components, "scheduler": getattr(schedulers, name).from_config(sd_pipe.scheduler.config)})
    expected, got = both(ref_swapped, ours, prompt="a red cat", num_inference_steps=3)
    assert max_diff(got, expected) < MAX_PIXEL_DIFF


def test_output_types(sd_saved, sd_pipe):
    ref = sd_saved[0]
    args = dict(prompt="a cat", num_inference_steps=2, height=32, width=32)
    pil = sd_pipe(generator=seeded(), **args).images
    ref_pil = ref(generator=seeded(), **args).images
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (32, 32)
    assert max_diff(np.asarray(pil[0]), np.asarray(ref_pil[0])) <= 1
    pt = sd_pipe(generator=seeded(), output_type="pt", **args).images
    assert pt.shape == (1, 3, 32, 32) and 0 <= float(pt.min()) <= float(pt.max()) <= 1
    latents = sd_pipe(generator=seeded(), output_type="latent", **args).images
    ref_latents = ref(generator=seeded(), output_type="latent", **args).images
    assert latents.shape == (1, 4, 16, 16) and max_diff(latents, ref_latents) < 1e-3
    with pytest.raises(ValueError, match="output_type"):
        sd_pipe(prompt="a cat", output_type="jpeg")


def test_prompt_embeds_and_callback(sd_pipe):
    cond = sd_pipe.encode_prompt("a red cat", guided=True, negative_prompt="blurry")
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append((i, int(t), tuple(tensors["latents"].shape)))
        return {"latents": tensors["latents"]}

    from_embeds = sd_pipe(prompt_embeds=cond.prompt_embeds, negative_prompt_embeds=cond.negative_prompt_embeds,
                          generator=seeded(), callback_on_step_end=callback, **BASE).images
    from_text = sd_pipe(prompt="a red cat", negative_prompt="blurry", generator=seeded(), **BASE).images
    assert max_diff(from_embeds, from_text) < 1e-6
    assert [s[0] for s in seen] == [0, 1] and seen[0][2] == (1, 4, 16, 16)


def test_bad_inputs_are_clear_errors(sd_pipe):
    with pytest.raises(ValueError, match="multiples of 8"):
        sd_pipe(prompt="a cat", height=30, width=32)
    with pytest.raises(ValueError, match="exactly one of prompt and prompt_embeds"):
        sd_pipe(num_inference_steps=1)
    with pytest.raises(ValueError, match="generators"):
        sd_pipe(prompt="a cat", generator=[seeded(0), seeded(1)], **BASE)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        sd_pipe(prompt="a cat", callback_on_step_end_tensor_inputs=["noise"], **BASE)


def test_denoise_step_batches_jobs_with_their_own_timestep_and_guidance(sd_pipe):
    """Two jobs in one model call give what each gives alone (the step batcher's contract)."""
    a = sd_pipe.encode_prompt("a red cat", guided=True)
    b = sd_pipe.encode_prompt("a blue dog", guided=True, negative_prompt="ugly")
    torch.manual_seed(0)
    xa, xb = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        alone_a = sd_pipe.denoise_step(xa, 901, a, 3.0)
        alone_b = sd_pipe.denoise_step(xb, 41, b, 7.5, guidance_rescale=0.5)
        batched = sd_pipe.denoise_step(
            torch.cat([xa, xb]), torch.tensor([901, 41]), Conditioning.cat([a, b]),
            torch.tensor([3.0, 7.5]), guidance_rescale=torch.tensor([0.0, 0.5]),
        )
    assert torch.allclose(batched[:1], alone_a, atol=1e-5)
    assert torch.allclose(batched[1:], alone_b, atol=1e-5)
    unguided = sd_pipe.encode_prompt("a cat", guided=False)
    with pytest.raises(ValueError, match="guided and unguided"):
        Conditioning.cat([a, unguided])
    with torch.no_grad():
        plain = sd_pipe.denoise_step(xa, 500, unguided)
        b_alone = sd_pipe.denoise_step(xb, 41, b, 7.5)
        mixed = sd_pipe.denoise_step(torch.cat([xb, xa]), torch.tensor([41, 500]),
                                     Conditioning.cat([b, unguided.as_guided()]), torch.tensor([7.5, 9.0]))
    assert torch.allclose(mixed[1:], plain, atol=1e-6) and torch.allclose(mixed[:1], b_alone, atol=1e-5)


def test_call_does_not_touch_the_shared_scheduler(sd_pipe):
    before = sd_pipe.scheduler.__dict__.copy()
    sd_pipe(prompt="a cat", generator=seeded(), **BASE)
    assert sd_pipe.scheduler.__dict__.keys() == before.keys()
    assert all(sd_pipe.scheduler.__dict__[k] is v for k, v in before.items())


def test_guidance_distilled_unet_uses_guidance_embedding_not_cfg(tmp_path):
    """LCM-style UNet (time_cond_proj_dim): no negative branch, w embedded as timestep_cond."""
    import diffusers

    from tests.pipelines import tiny

    ref = diffusers.StableDiffusionPipeline(
        vae=tiny.tiny_vae(), text_encoder=tiny.tiny_text_encoder(), tokenizer=tiny.tiny_tokenizer(),
        unet=tiny.tiny_sd_unet(time_cond_proj_dim=4), scheduler=diffusers.LCMScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    ref.save_pretrained(tmp_path)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path)
    assert not pipe.guided(8.5)
    cond = pipe.guidance_condition(pipe.encode_prompt("a cat", guided=False), 8.5)
    assert cond.timestep_cond.shape == (1, 4)
    expected, got = both(ref, pipe, prompt="a cat", guidance_scale=8.5, num_inference_steps=3)
    assert max_diff(got, expected) < MAX_PIXEL_DIFF
