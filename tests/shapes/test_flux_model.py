"""The committed kiln-shapes-flux model: small, half precision, the same image in Kiln and in Diffusers'
`FluxPipeline`, and it draws what it is asked, position included (the accuracy over 100 held-out
prompts is measured by `python -m kiln_shapes evaluate`, docs/kiln-shapes.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kiln_shapes import data
from kiln_shapes.evaluate import FIELDS, generate, held_out_scenes, judge
from kiln_shapes.flux_models import DEFAULT_STEPS
from kiln_shapes.flux_tokenizer import MAX_SEQUENCE_LENGTH

MODEL = Path(__file__).resolve().parents[2] / "models" / "kiln-shapes-flux"
pytestmark = pytest.mark.skipif(not (MODEL / "model_index.json").is_file(), reason="kiln-shapes-flux is not committed")
MAX_PIXEL_DIFF = 2e-3
N_PROMPTS = 12  # held-out prompts (combinations never trained on) for the adherence check
MIN_RIGHT = {"colour": 11, "shape": 10, "position": 10, "size": 10, "background": 12}  # of 12
CALL = dict(num_inference_steps=DEFAULT_STEPS, guidance_scale=1.0, height=64, width=64, output_type="np",
            max_sequence_length=MAX_SEQUENCE_LENGTH)


@pytest.fixture(scope="module")
def pipe():
    from worker.pipelines import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(MODEL)


def test_model_is_small_and_stored_in_half_precision():
    from safetensors.torch import load_file

    assert sum(p.stat().st_size for p in MODEL.rglob("*") if p.is_file()) < 25 * 2 ** 20
    for file in MODEL.glob("*/*.safetensors"):
        assert {t.dtype for t in load_file(file).values()} == {torch.float16}, file


def test_it_is_a_schnell_style_flux_pipeline(pipe):
    from worker.pipelines import FluxPipeline

    assert isinstance(pipe, FluxPipeline) and not pipe.transformer.config.guidance_embeds
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert pipe.vae.config.shift_factor is not None and pipe.vae.config.latent_channels == 4


def test_diffusers_gives_the_same_image_and_timesteps(pipe):
    from diffusers import FluxPipeline

    reference = FluxPipeline.from_pretrained(MODEL, dtype=torch.float32)
    prompt = "a small blue triangle at the top right on a gray background"
    ours = pipe(prompt, generator=torch.Generator().manual_seed(7), **CALL).images
    theirs = reference(prompt, generator=torch.Generator().manual_seed(7), **CALL).images
    assert np.abs(ours - theirs).max() <= MAX_PIXEL_DIFF
    kiln_timesteps = pipe.new_scheduler(DEFAULT_STEPS, 64).timesteps  # 64 image tokens at 64×64
    assert torch.allclose(kiln_timesteps, reference.scheduler.timesteps.to(kiln_timesteps.dtype), atol=1e-3)


def test_kiln_draws_what_it_is_asked_on_held_out_prompts(pipe):
    scenes = held_out_scenes(N_PROMPTS)
    images = generate(pipe, [data.caption(s) for s in scenes], DEFAULT_STEPS, 1.0, seed=0,
                      max_sequence_length=MAX_SEQUENCE_LENGTH)
    verdicts = [judge(image) for image in images]
    right = {f: sum(getattr(v, f) == getattr(s, f) for v, s in zip(verdicts, scenes)) for f in FIELDS}
    assert all(right[f] >= MIN_RIGHT[f] for f in FIELDS), (right, verdicts)
