"""The step batcher on transformer denoisers (FLUX): jobs of different schedulers, step counts,
text lengths, sizes and guidance share model calls, and each gets exactly its unbatched image."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from shared.jobs.params import FluxFields, JobParams
from tests.pipelines import tiny_flow
from worker.batching import BatchedTransformer, StepBatcher, StepRequest
from worker.job_pipeline import pipeline_for_task
from worker.loaded_model import call_cost_cap, denoiser_name, load_model
from worker.pipelines import DiffusionPipeline
from worker.schedulers import FlowMatchEulerDiscreteScheduler


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    folder = tiny_flow.save_tiny_flux(tmp_path_factory.mktemp("flux"), guidance_embeds=True)
    return DiffusionPipeline.from_pretrained(folder)


def scheduler(pipe, **overrides):
    return FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, **overrides)


JOBS = [  # schedulers, step counts, text lengths, sizes, guidance and true CFG all differ
    dict(prompt="a red cat", steps=4, sched={}, size=32, length=16, guidance=3.5, seed=1),
    dict(prompt="a blue dog", steps=6, sched={"use_karras_sigmas": True}, size=32, length=16, guidance=5.0,
         seed=2),
    dict(prompt="a green bird", steps=3, sched={"stochastic_sampling": True}, size=32, length=16, guidance=1.0,
         seed=3),
    dict(prompt="a cat", steps=5, sched={"use_exponential_sigmas": True}, size=48, length=16, guidance=3.5, seed=4),
    dict(prompt="a dog", steps=4, sched={}, size=32, length=24, guidance=3.5, seed=5, negative="ugly", cfg=3.0),
    dict(prompt="a bird", steps=4, sched={"shift_terminal": 0.1}, size=32, length=24, guidance=2.0, seed=6, n=2),
]


def run(loaded, job, session=None):
    pipe = pipeline_for_task(loaded, "flux", "text-to-image", scheduler(loaded.pipeline, **job["sched"]), session)
    extra = {"negative_prompt": job["negative"], "true_cfg_scale": job["cfg"]} if "negative" in job else {}
    return pipe(prompt=job["prompt"], num_inference_steps=job["steps"], guidance_scale=job["guidance"],
                height=job["size"], width=job["size"], max_sequence_length=job["length"],
                num_images_per_prompt=job.get("n", 1), generator=torch.Generator().manual_seed(job["seed"]),
                output_type="np", **extra).images


def run_together(loaded, jobs):
    results, errors = [None] * len(jobs), [None] * len(jobs)

    def target(k):
        try:
            with loaded.batcher.session() as session:
                results[k] = run(loaded, jobs[k], session)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors[k] = exc

    threads = [threading.Thread(target=target, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results, errors


def test_the_transformer_is_found_and_stood_in_for(flux):
    loaded = load_model("flux", flux, max_rows=8)
    assert denoiser_name(flux) == "transformer" and loaded.denoiser == "transformer"
    with loaded.batcher.session() as session:
        pipe = pipeline_for_task(loaded, "flux", "text-to-image", scheduler(flux), session)
    assert isinstance(pipe.transformer, BatchedTransformer)
    assert pipe.transformer.config == flux.transformer.config and pipe.vae is flux.vae
    loaded.close()


def test_batched_equals_unbatched_across_schedulers_lengths_and_sizes(flux):
    loaded = load_model("flux", flux, max_rows=32)
    alone = [run(loaded, job) for job in JOBS]  # no session: straight to the transformer
    together, errors = run_together(loaded, JOBS)
    assert errors == [None] * len(JOBS)
    for job, a, b in zip(JOBS, alone, together):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-3, job
    stats = loaded.batcher.stats
    assert stats.job_steps == sum(job["steps"] for job in JOBS)
    assert stats.calls < stats.job_steps  # steps were shared ...
    # ... but only within a layout: 32² × 16 tokens, 48² × 16 and 32² × 24 never share a call.
    assert stats.calls >= max(job["steps"] for job in JOBS)
    loaded.close()


def test_per_call_tensors_are_part_of_the_layout():
    ids = torch.zeros(4, 3)
    a = StepRequest(torch.zeros(1, 4, 8), torch.ones(1), {}, {"img_ids": ids}, names=("hidden_states", "timestep"))
    b = StepRequest(torch.zeros(2, 4, 8), torch.ones(2), {}, {"img_ids": ids.clone()},
                    names=("hidden_states", "timestep"))
    c = StepRequest(torch.zeros(1, 4, 8), torch.ones(1), {}, {"img_ids": ids + 1}, names=("hidden_states", "timestep"))
    assert a.layout() == b.layout() != c.layout()


class Recorder(torch.nn.Module):
    """A stand-in model that records the rows of each call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, hidden_states, timestep, img_ids, return_dict=False, **_):
        self.calls.append(hidden_states.shape[0])
        return (hidden_states + img_ids.sum(),)


def test_cheap_groups_run_first_and_the_call_cost_is_capped():
    model = Recorder()
    batcher = StepBatcher(model, max_rows=16, max_call_cost=2 * 4 * 8)
    names = ("hidden_states", "timestep")
    small = [StepRequest(torch.zeros(1, 4, 8), torch.ones(1), {}, {"img_ids": torch.zeros(4, 3)}, names=names)
             for _ in range(3)]
    big = StepRequest(torch.zeros(1, 64, 8), torch.ones(1), {}, {"img_ids": torch.zeros(64, 3)}, names=names)
    groups = batcher._groups([big, *small])
    assert [sum(r.rows for r in g) for g in groups] == [1, 2, 1]  # cap: 2 small rows a call; cheapest first
    assert groups[-1] == [big]  # the oversized job's call runs after the cheap ones
    batcher.close()


def test_call_cost_cap_is_a_full_batch_of_default_size_rows(flux):
    cap = call_cost_cap(flux, max_rows=4, size=(32, 32))
    assert cap == 4 * 16 * 16 * 16  # 16 latent channels, 32 / 2 latent side
    loaded = load_model("flux", flux, max_rows=4, max_call_cost=cap)
    packed = torch.zeros(1, (32 // 4) ** 2, 64)  # one 32×32 image: 64 tokens of 64 = 16 × 16 × 16
    assert StepRequest(packed, torch.ones(1), {}).cost * 4 == cap
    loaded.close()


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    folder = tiny_flow.save_tiny_sd3(tmp_path_factory.mktemp("sd3"))
    return DiffusionPipeline.from_pretrained(folder)


SD3_JOBS = [  # flow schedulers by their short names: Euler, Heun (2 calls a step), DPM-Solver++ 2M
    dict(prompt="a red cat", scheduler="flow_euler", steps=4, guidance=5.0, size=32, seed=1),
    dict(prompt="a blue dog", scheduler="flow_heun", steps=3, guidance=3.0, size=32, seed=2),
    dict(prompt="a bird", scheduler="flow_dpmpp_2m", steps=5, guidance=1.0, size=32, seed=3),  # no CFG: 1 row
    dict(prompt="a cat", scheduler="flow_euler", steps=4, guidance=4.0, size=48, seed=4),
]


def run_sd3(loaded, job, session=None):
    pipe = pipeline_for_task(loaded, "sd3", "text-to-image", job["scheduler"], session)
    return pipe(prompt=job["prompt"], negative_prompt="ugly", num_inference_steps=job["steps"],
                guidance_scale=job["guidance"], height=job["size"], width=job["size"], max_sequence_length=16,
                generator=torch.Generator().manual_seed(job["seed"]), output_type="np").images


def test_sd3_batched_equals_unbatched(sd3):
    loaded = load_model("sd3", sd3, max_rows=32)
    assert loaded.denoiser == "transformer"
    alone = [run_sd3(loaded, job) for job in SD3_JOBS]
    together, errors = [None] * len(SD3_JOBS), [None] * len(SD3_JOBS)

    def target(k):
        try:
            with loaded.batcher.session() as session:
                together[k] = run_sd3(loaded, SD3_JOBS[k], session)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors[k] = exc

    threads = [threading.Thread(target=target, args=(k,)) for k in range(len(SD3_JOBS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [None] * len(SD3_JOBS)
    for job, a, b in zip(SD3_JOBS, alone, together):
        assert a.shape == b.shape and np.abs(a - b).max() < 1e-3, job
    assert loaded.batcher.stats.calls < loaded.batcher.stats.job_steps
    loaded.close()


def test_a_flux_job_through_run_params_with_previews(flux):
    from worker.job_pipeline import run_params
    from worker.previews import preview_image

    loaded = load_model("flux", flux, max_rows=8)
    params = JobParams(model="flux", task="text-to-image", prompt="a cat", steps=3, scheduler="flow_euler",
                       guidance_scale=3.5, seed=1, width=48, height=32, preview_every=1,
                       family_fields=FluxFields(true_cfg_scale=1.0, max_sequence_length=16))
    previews, steps = [], []
    images = run_params(loaded, "flux", params, lambda step, total: steps.append((step, total)),
                        on_preview=lambda step, latents: previews.append(preview_image(latents, False)))
    assert images[0].size == (48, 32) and steps[-1] == (3, 3)
    assert [p.size for p in previews] == [(24, 16)] * 2  # latents unpacked: 16 × 24 at scale 2
    loaded.close()
