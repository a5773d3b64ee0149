"""Every task end to end through the API on a tiny Stable Diffusion model: text-to-image,
image-to-image and inpaint (JSON base64 inputs), each equal to the pipeline called directly."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from tests.fixtures.stack import running_stack
from tests.pipelines.tiny import tiny_sd_pipeline

SIZE = 32


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd-tiny")
    tiny_sd_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture
def sd_stack(stack_env, tmp_path, sd_folder):
    catalog = tmp_path / "models.json"
    catalog.write_text(json.dumps({"models": [{
        "name": "sd-tiny", "source": str(sd_folder), "family": "sd", "default_width": SIZE,
        "default_height": SIZE, "default_steps": 4, "default_scheduler": "euler", "default_guidance_scale": 5.0,
    }]}))
    with running_stack({**stack_env, "KILN_MODELS_FILE": str(catalog)}, tmp_path) as running:
        yield running


def png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def direct(sd_folder, cls_name: str, scheduler: str, **kwargs) -> np.ndarray:
    import worker.pipelines
    from worker.job_scheduler import build_scheduler

    loaded = worker.pipelines.DiffusionPipeline.from_pretrained(sd_folder)
    cls = getattr(worker.pipelines, cls_name)
    pipe = cls(**{**loaded.components, "scheduler": build_scheduler(scheduler, loaded.scheduler)})
    with torch.inference_mode():
        image = pipe(**kwargs, generator=torch.Generator().manual_seed(3), output_type="pil").images[0]
    return np.asarray(image, dtype=np.int16)


def fetch(url: str) -> np.ndarray:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=np.int16)


def test_every_task_through_the_api(sd_stack, sd_folder):
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    mask = Image.fromarray(np.where(np.arange(SIZE)[None, :] < SIZE // 2, 255, 0).astype(np.uint8).repeat(SIZE, 0))
    common = dict(model="sd-tiny", prompt="a red circle", negative_prompt="blue", steps=4, seed=3,
                  scheduler="euler", guidance_scale=5.0)
    submitted = {
        "text-to-image": sd_stack.submit(**common, task="text-to-image"),
        "image-to-image": sd_stack.submit(**common, task="image-to-image", image=png_b64(source), strength=0.75),
        "inpaint": sd_stack.submit(**common, task="inpaint", image=png_b64(source), mask_image=png_b64(mask),
                                   strength=1.0),
    }
    done = {task: sd_stack.wait(job["id"]) for task, job in submitted.items()}
    for task, job in done.items():
        assert job["status"] == "succeeded", (task, job["error"], sd_stack.tail())
        assert (job["outputs"][0]["width"], job["outputs"][0]["height"]) == (SIZE, SIZE)
    call = dict(prompt="a red circle", negative_prompt="blue", num_inference_steps=4, guidance_scale=5.0)
    expected = {
        "text-to-image": direct(sd_folder, "StableDiffusionPipeline", "euler", **call, width=SIZE, height=SIZE),
        "image-to-image": direct(sd_folder, "StableDiffusionImg2ImgPipeline", "euler", **call,
                                 image=source, strength=0.75),
        "inpaint": direct(sd_folder, "StableDiffusionInpaintPipeline", "euler", **call, image=source,
                          mask_image=mask, strength=1.0),
    }
    for task, job in done.items():
        got = fetch(job["outputs"][0]["url"])
        assert np.abs(got - expected[task]).max() <= 1, task
