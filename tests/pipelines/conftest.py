"""Shared fixtures: tiny diffusers pipelines saved once per module, and the Kiln loads of them."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from tests.pipelines import tiny
from tests.pipelines.hubcache import hub_cache  # noqa: F401  (fixture)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is ~10x faster than two
    (no spinning OpenMP workers competing with other processes). Restored after each module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sd_saved(tmp_path_factory):
    """(diffusers SD pipeline, folder it was saved to)."""
    ref = tiny.tiny_sd_pipeline()
    folder = tmp_path_factory.mktemp("sd")
    ref.save_pretrained(folder)
    return ref, folder


@pytest.fixture(scope="module")
def sd_pipe(sd_saved):
    from worker.pipelines import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(sd_saved[1])


@pytest.fixture(scope="module")
def rgb_image():
    rng = np.random.default_rng(0)
    return PIL.Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def mask_image():
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:, 16:] = 255  # repaint the right half
    return PIL.Image.fromarray(mask)


@pytest.fixture(scope="module")
def ddpm_saved(tmp_path_factory):
    """(diffusers DDPM pipeline, folder it was saved to)."""
    ref = tiny.tiny_ddpm_pipeline()
    folder = tmp_path_factory.mktemp("ddpm")
    ref.save_pretrained(folder)
    return ref, folder
