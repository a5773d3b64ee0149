"""`encode_prompt` of the SD3 and FLUX pipelines in Diffusers' form: the same signature (positional
order included) and the same tuple of tensors, which `__call__` takes back as `*_embeds` keywords.

Found by a randomized parity fuzz: these returned Kiln's `Conditioning` instead, so Diffusers code
that unpacks `encode_prompt` failed on them (SD and SDXL already had Diffusers' form).
"""

from __future__ import annotations

import diffusers
import pytest
import torch

from tests.pipelines import tiny_flow
from tests.pipelines.tiny import MAX_PIXEL_DIFF, max_diff, seeded
from worker.pipelines import DiffusionPipeline

ARGS = dict(num_inference_steps=2, output_type="np", height=32, width=32)


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    folder = tiny_flow.save_tiny_sd3(tmp_path_factory.mktemp("sd3"))
    return diffusers.StableDiffusion3Pipeline.from_pretrained(folder), DiffusionPipeline.from_pretrained(folder)


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    folder = tiny_flow.save_tiny_flux(tmp_path_factory.mktemp("flux"))
    return diffusers.FluxPipeline.from_pretrained(folder), DiffusionPipeline.from_pretrained(folder)


def _close(ours, theirs) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_sd3_signature_is_diffusers(sd3):
    ref, pipe = sd3
    theirs = list(type(ref).encode_prompt.__code__.co_varnames[1:type(ref).encode_prompt.__code__.co_argcount])
    ours = list(type(pipe).encode_prompt.__code__.co_varnames[1:type(pipe).encode_prompt.__code__.co_argcount])
    assert ours == theirs


@pytest.mark.parametrize("guided", [True, False])
def test_sd3_outputs_match_positionally(sd3, guided):
    ref, pipe = sd3
    args = (["a cat", "a red dog"], None, None, "cpu", 2, guided)
    kwargs = dict(negative_prompt=["ugly", "blurry"], max_sequence_length=16)
    _close(pipe.encode_prompt(*args, **kwargs), ref.encode_prompt(*args, **kwargs))


def test_sd3_embeds_round_trip_through_call(sd3):
    ref, pipe = sd3
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        "a red cat", None, None, negative_prompt="ugly", max_sequence_length=16)
    args = dict(ARGS, prompt_embeds=embeds, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled,
                negative_pooled_prompt_embeds=negative_pooled)
    assert max_diff(pipe(generator=seeded(2), **args).images, ref(generator=seeded(2), **args).images) < MAX_PIXEL_DIFF


def test_flux_signature_is_diffusers(flux):
    ref, pipe = flux
    code_ref, code_ours = type(ref).encode_prompt.__code__, type(pipe).encode_prompt.__code__
    assert code_ours.co_varnames[1:code_ours.co_argcount] == code_ref.co_varnames[1:code_ref.co_argcount]


def test_flux_outputs_match_positionally(flux):
    ref, pipe = flux
    args = (["a cat", "a blue dog"], None, "cpu", 2)
    _close(pipe.encode_prompt(*args, max_sequence_length=16), ref.encode_prompt(*args, max_sequence_length=16))


def test_flux_embeds_round_trip_through_call(flux):
    ref, pipe = flux
    embeds, pooled, text_ids = pipe.encode_prompt("a red cat", max_sequence_length=16)
    assert text_ids.shape == (16, 3) and not text_ids.any()
    args = dict(ARGS, prompt_embeds=embeds, pooled_prompt_embeds=pooled)
    assert max_diff(pipe(generator=seeded(4), **args).images, ref(generator=seeded(4), **args).images) < MAX_PIXEL_DIFF


def test_kiln_form_with_guided_keyword_still_gives_conditioning(sd3, flux):
    assert sd3[1].encode_prompt("a cat", max_sequence_length=16, guided=True).guided
    assert not flux[1].encode_prompt("a cat", max_sequence_length=16, guided=False).guided
