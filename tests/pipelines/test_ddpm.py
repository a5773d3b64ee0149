"""DDPMPipeline: same weights, same seed -> the same images as diffusers' DDPMPipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.pipelines.tiny import tiny_ddpm_pipeline
from worker.pipelines import DDPMPipeline, DiffusionPipeline, ImagePipelineOutput


@pytest.fixture(scope="module", params=["ddpm", "ddim"])
def saved(request, tmp_path_factory):
    ref = tiny_ddpm_pipeline(request.param)
    folder = tmp_path_factory.mktemp(f"ddpm-{request.param}")
    ref.save_pretrained(folder)
    return ref, folder


def test_loads_as_ddpm_pipeline(saved):
    ref, folder = saved
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert type(pipe) is DDPMPipeline
    assert type(pipe.scheduler).__name__ == type(ref.scheduler).__name__
    assert set(pipe.components) == {"unet", "scheduler"}
    assert pipe.device.type == "cpu" and pipe.dtype == torch.float32


def test_np_output_matches_diffusers(saved):
    ref, folder = saved
    pipe = DiffusionPipeline.from_pretrained(folder)
    expected = ref(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=10, output_type="np").images
    got = pipe(batch_size=2, generator=torch.Generator().manual_seed(3), num_inference_steps=10, output_type="np").images
    assert got.shape == expected.shape == (2, 8, 8, 3)
    assert np.abs(got - expected).max() < 1e-3


def test_pil_pt_and_tuple_outputs(saved):
    ref, folder = saved
    pipe = DiffusionPipeline.from_pretrained(folder)
    kwargs = dict(num_inference_steps=4)
    expected = ref(generator=torch.Generator().manual_seed(1), **kwargs).images[0]
    got = pipe(generator=torch.Generator().manual_seed(1), **kwargs)
    assert isinstance(got, ImagePipelineOutput)
    diff = np.abs(np.asarray(got.images[0], dtype=int) - np.asarray(expected, dtype=int))
    assert got.images[0].size == (8, 8) and diff.max() <= 1
    pt = pipe(generator=torch.Generator().manual_seed(1), output_type="pt", return_dict=False, **kwargs)
    assert isinstance(pt, tuple) and pt[0].shape == (1, 3, 8, 8)
    assert 0 <= float(pt[0].min()) and float(pt[0].max()) <= 1


def test_generator_list_draws_one_row_per_generator(saved):
    ref, folder = saved
    pipe = DiffusionPipeline.from_pretrained(folder)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (5, 6)]  # noqa: E731
    expected = ref(batch_size=2, generator=gens(), num_inference_steps=3, output_type="np").images
    got = pipe(batch_size=2, generator=gens(), num_inference_steps=3, output_type="np").images
    assert np.abs(got - expected).max() < 1e-3
    single = pipe(batch_size=1, generator=torch.Generator().manual_seed(6), num_inference_steps=3, output_type="np")
    assert np.abs(single.images[0] - got[1]).max() < 1e-5


def test_call_leaves_the_shared_scheduler_untouched(saved):
    _, folder = saved
    pipe = DiffusionPipeline.from_pretrained(folder)
    before = dict(pipe.scheduler.__dict__)
    pipe(num_inference_steps=2, output_type="np")
    assert pipe.scheduler.__dict__.keys() == before.keys()
    assert getattr(pipe.scheduler, "num_inference_steps", None) == before.get("num_inference_steps")
