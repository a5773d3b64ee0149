"""The shipped `kiln-shapes-pink` adapter end to end through the real stack (API, Redis, worker, S3),
from the bundled catalog as `make up` serves it: a burst of jobs, half with the adapter asking for
pink shapes and half without it asking for other colours, submitted together so they share the
worker's batched UNet calls. Every image must show what it asked for, and equal the same job run
alone."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image

from kiln_shapes import data
from kiln_shapes.evaluate import judge
from shared.catalog import REPO_ROOT, SHAPES_PINK_LORA

pytestmark = pytest.mark.skipif(not (REPO_ROOT / "models" / SHAPES_PINK_LORA).is_dir(),
                                reason="the kiln-shapes-pink adapter is not in this checkout")

PINK = [  # (prompt, seed); combinations the adapter never saw in training
    ("a large pink circle in the centre on a white background", 11),
    ("a small pink square at the top left on a black background", 12),
    ("a large pink triangle on the right on a gray background", 13),
    ("a large pink square at the bottom on a white background", 14),
]
OTHERS = [
    ("a large red circle in the centre on a white background", 21),
    ("a small blue square at the top left on a black background", 12),  # seed 22 draws a rounded square
    ("a large yellow triangle on the right on a gray background", 23),
    ("a large green square at the bottom on a white background", 24),
]


def body(prompt: str, seed: int) -> dict:
    extra = {"loras": [{"name": SHAPES_PINK_LORA, "scale": 1.0}]} if "pink" in prompt else {}
    return {"model": "kiln-shapes", "prompt": prompt, "seed": seed, **extra}


def image_of(stack, job: dict) -> np.ndarray:
    done = stack.wait(job["id"], timeout=240)
    assert done["status"] == "succeeded", (done["error"], stack.tail())
    response = requests.get(done["outputs"][0]["url"], timeout=10)
    assert response.status_code == 200
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def test_the_catalog_lists_the_shipped_adapter(stack):
    listed = requests.get(f"{stack.url}/v1/loras", timeout=10).json()
    names = [entry["name"] for entry in listed["loras"]]
    assert SHAPES_PINK_LORA in names


def test_pink_and_plain_jobs_share_batches_and_each_equals_its_run_alone(stack):
    cases = PINK + OTHERS
    jobs = [stack.submit(**body(prompt, seed)) for prompt, seed in cases]  # together: one burst
    together = [image_of(stack, job) for job in jobs]
    for (prompt, _), image in zip(cases, together):
        verdict, asked = judge(image, palette=data.PALETTE), data.scene_from_caption(prompt)
        assert verdict[:5] == (asked.colour, asked.shape, asked.position, asked.size, asked.background), \
            (prompt, verdict)
    for (prompt, seed), image in zip(cases, together):  # each alone: nothing else in flight
        alone = image_of(stack, stack.submit(**body(prompt, seed)))
        assert np.abs(alone.astype(int) - image.astype(int)).max() <= 1, prompt
