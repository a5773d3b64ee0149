"""The committed kiln-shapes model: small, loads in Kiln and in Diffusers, draws what it is asked
(the accuracy over 100 held-out prompts is measured by `python -m kiln_shapes sweep`, docs/kiln-shapes.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kiln_shapes import data
from kiln_shapes.evaluate import generate, judge

MODEL = Path(__file__).resolve().parents[2] / "models" / "kiln-shapes"
PROMPTS = [
    data.Scene("circle", "red", "large", "in the centre", "white"),
    data.Scene("square", "blue", "large", "on the left", "black"),
    data.Scene("triangle", "yellow", "large", "at the bottom", "gray"),
]
MAX_PIXEL_DIFF = 2e-3


@pytest.fixture(scope="module")
def pipe():
    from worker.pipelines import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(MODEL)


def test_model_is_small_and_stored_in_half_precision():
    files = [p for p in MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 25 * 2 ** 20
    from safetensors.torch import load_file

    weights = load_file(MODEL / "unet" / "diffusion_pytorch_model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.float16}


def test_kiln_draws_what_it_is_asked(pipe):
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"  # DPM-Solver++ 2M by default
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    images = generate(pipe, [data.caption(s) for s in PROMPTS], steps=20, guidance_scale=4.0, seed=0)
    verdicts = [judge(image) for image in images]
    for verdict, scene in zip(verdicts, PROMPTS):
        assert (verdict.colour, verdict.shape, verdict.size, verdict.background) == \
            (scene.colour, scene.shape, scene.size, scene.background), (data.caption(scene), verdict)


def test_diffusers_gives_the_same_image(pipe):
    from diffusers import StableDiffusionPipeline

    reference = StableDiffusionPipeline.from_pretrained(MODEL, dtype=torch.float32, safety_checker=None)
    kwargs = dict(num_inference_steps=10, guidance_scale=4.0, height=64, width=64, output_type="np")
    prompt = data.caption(PROMPTS[0])
    ours = pipe(prompt, generator=torch.Generator().manual_seed(7), **kwargs).images
    theirs = reference(prompt, generator=torch.Generator().manual_seed(7), **kwargs).images
    assert np.abs(ours - theirs).max() <= MAX_PIXEL_DIFF
