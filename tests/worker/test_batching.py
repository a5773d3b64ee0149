"""The step batcher: many jobs' denoising steps in one model call, with results unchanged."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from tests.pipelines.tiny import tiny_ddpm_pipeline, tiny_sd_pipeline
from worker.job_pipeline import pipeline_for_task
from worker.loaded_model import load_model
from worker.pipelines import DiffusionPipeline


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd")
    tiny_sd_pipeline().save_pretrained(folder)
    return DiffusionPipeline.from_pretrained(folder)


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddpm")
    tiny_ddpm_pipeline().save_pretrained(folder)
    return DiffusionPipeline.from_pretrained(folder)


JOBS = [  # different schedulers, step counts, guidance, prompts, sizes of batch
    dict(prompt="a red circle", scheduler="ddim", steps=6, guidance_scale=7.5, n=1, seed=1),
    dict(prompt="a blue square", scheduler="euler", steps=9, guidance_scale=3.0, n=2, seed=2),
    dict(prompt="a green triangle", scheduler="dpmpp_2m", steps=4, guidance_scale=5.0, n=1, seed=3),
    dict(prompt="a dog", scheduler="heun", steps=5, guidance_scale=6.0, n=1, seed=4),
    dict(prompt="a cat", scheduler="euler_a", steps=7, guidance_scale=1.0, n=1, seed=5),  # unguided
]


def run_sd(loaded, job, session=None, on_step=None, delay=0.0):
    time.sleep(delay)
    pipe = pipeline_for_task(loaded, "sd", "text-to-image", job["scheduler"], session)

    def callback(_p, i, _t, tensors):
        if on_step:
            on_step(i)
        return tensors

    return pipe(prompt=job["prompt"], num_inference_steps=job["steps"], guidance_scale=job["guidance_scale"],
                num_images_per_prompt=job["n"], generator=torch.Generator().manual_seed(job["seed"]),
                output_type="np", callback_on_step_end=callback).images


def run_concurrently(loaded, jobs, delays=None, on_steps=None):
    results, errors = [None] * len(jobs), [None] * len(jobs)

    def target(k):
        try:
            with loaded.batcher.session() as session:
                results[k] = run_sd(loaded, jobs[k], session, (on_steps or {}).get(k), (delays or {}).get(k, 0))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors[k] = exc

    threads = [threading.Thread(target=target, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results, errors


def test_batched_equals_unbatched(sd):
    loaded = load_model("sd", sd, max_rows=32)
    alone = [run_sd(loaded, job) for job in JOBS]
    together, errors = run_concurrently(loaded, JOBS)
    assert errors == [None] * len(JOBS)
    for a, b in zip(alone, together):
        assert np.abs(a - b).max() < 1e-3
    assert loaded.batcher.stats.calls < sum(j["steps"] * 2 for j in JOBS)  # steps really were shared
    assert loaded.batcher.stats.rows / loaded.batcher.stats.calls > 2


def test_jobs_join_and_leave_mid_loop(sd):
    loaded = load_model("sd", sd, max_rows=32)
    jobs = [dict(JOBS[0], steps=20), dict(JOBS[1], steps=3), dict(JOBS[2], steps=5)]
    alone = [run_sd(loaded, job) for job in jobs]
    seen_jobs = []
    loaded.batcher.stats.last_batch_jobs = 0
    # Step boundaries, not sleeps, order the threads: job 2 joins after job 0's first step, and
    # job 0 takes its last steps only once both short jobs have made their last model call.
    joined, short_done = threading.Event(), [threading.Event(), threading.Event()]

    def watch(i):
        seen_jobs.append(loaded.batcher.stats.last_batch_jobs)
        if i == 1:
            joined.wait(30)
        if i == 15:
            for done in short_done:
                done.wait(30)

    def short(k, last):
        def on_step(i):
            if k == 2:
                joined.set()
            if i == last:
                short_done[k - 1].set()
        return on_step

    on_steps = {0: watch, 1: short(1, 2), 2: short(2, 4)}
    together, errors = run_concurrently(loaded, jobs, delays={2: 0.05}, on_steps=on_steps)
    assert errors == [None] * 3
    for a, b in zip(alone, together):
        assert np.abs(a - b).max() < 1e-3
    assert max(seen_jobs) >= 2 and seen_jobs[-1] == 1  # shared steps, then the long job ran on alone


def test_cancel_mid_batch_leaves_the_others_unaffected(sd):
    loaded = load_model("sd", sd, max_rows=32)
    alone = [run_sd(loaded, job) for job in JOBS[:3]]

    class Canceled(Exception):
        pass

    def cancel_at_two(i):
        if i == 2:
            raise Canceled()

    together, errors = run_concurrently(loaded, JOBS[:3], on_steps={1: cancel_at_two})
    assert isinstance(errors[1], Canceled) and errors[0] is None and errors[2] is None, errors
    assert np.abs(alone[0] - together[0]).max() < 1e-3
    assert np.abs(alone[2] - together[2]).max() < 1e-3
    assert loaded.batcher.jobs_in_loop == 0


def test_a_failing_batch_is_retried_job_by_job(ddpm):
    """Out of memory on the big batch: each job retried alone; only the one too big fails."""
    loaded = load_model("ddpm", ddpm, max_rows=64)
    real = loaded.batcher.module

    class SmallMemory(torch.nn.Module):
        def forward(self, sample, timestep, **kwargs):
            if sample.shape[0] > 3:
                raise RuntimeError("out of memory (simulated)")
            return real(sample, timestep, **kwargs)

    expected = [ddpm(batch_size=n, generator=torch.Generator().manual_seed(s), num_inference_steps=5,
                     output_type="np").images for n, s in ((1, 1), (2, 2), (4, 3))]
    loaded.batcher.module = SmallMemory()
    results, errors = [None] * 3, [None] * 3

    def target(k, n, s):
        try:
            with loaded.batcher.session() as session:
                pipe = pipeline_for_task(loaded, "ddpm", "unconditional", "ddpm", session)
                results[k] = pipe(batch_size=n, generator=torch.Generator().manual_seed(s), num_inference_steps=5,
                                  output_type="np").images
        except RuntimeError as exc:
            errors[k] = exc

    threads = [threading.Thread(target=target, args=args) for args in ((0, 1, 1), (1, 2, 2), (2, 4, 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert "out of memory" in str(errors[2]) and errors[0] is None and errors[1] is None
    assert np.abs(results[0] - expected[0]).max() < 1e-3 and np.abs(results[1] - expected[1]).max() < 1e-3


def test_batched_module_looks_like_the_model(sd):
    loaded = load_model("sd", sd, max_rows=8)
    with loaded.batcher.session() as session:
        pipe = pipeline_for_task(loaded, "sd", "text-to-image", "ddim", session)
        assert pipe.unet.config == sd.unet.config
        assert pipe.unet.dtype == sd.unet.dtype and pipe.device == sd.device
        assert pipe.vae is sd.vae and pipe.text_encoder is sd.text_encoder  # shared, not copied
        assert pipe.scheduler is not sd.scheduler


def test_jobs_finishing_together_are_decoded_in_one_vae_call(sd):
    loaded = load_model("sd", sd, max_rows=32)
    jobs = [dict(JOBS[0], steps=4, seed=s) for s in (1, 2, 3)]
    alone = [run_sd(loaded, job) for job in jobs]
    results, errors = [None] * 3, [None] * 3

    def target(k):
        with loaded.batcher.session() as session, loaded.decoder.session() as decoding:
            pipe = pipeline_for_task(loaded, "sd", "text-to-image", "ddim", session, decoding)
            job = jobs[k]
            results[k] = pipe(prompt=job["prompt"], num_inference_steps=4, guidance_scale=job["guidance_scale"],
                              generator=torch.Generator().manual_seed(job["seed"]), output_type="np").images

    threads = [threading.Thread(target=target, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for a, b in zip(alone, results):
        assert np.abs(a - b).max() < 1e-3
    assert loaded.decoder.stats.calls < 3 and loaded.decoder.stats.job_steps == 3


def test_a_job_leaves_the_decode_batch_once_it_is_decoded(sd):
    """Its decode done, a job still post-processes (to PIL, to PNG) inside its sessions; another job's
    decode must not wait for it as if it were still to come."""
    loaded = load_model("sd", sd, max_rows=8)
    try:
        with loaded.batcher.session() as session, loaded.decoder.session() as decoding:
            pipe = pipeline_for_task(loaded, "sd", "text-to-image", "ddim", session, decoding)
            pipe(prompt="a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                 output_type="np")
            assert loaded.decoder.jobs_in_loop == 0
    finally:
        loaded.close()


def test_a_lone_request_waits_only_the_minimum_window():
    """With everyone in the loop already asking, a batcher waits `min_window_s` for newcomers, not
    its whole gather window (which follows the duration of its calls)."""
    from worker.batching import StepBatcher, StepRequest

    class Decoder(torch.nn.Module):
        def decode(self, z, return_dict=False):
            return (z * 2,)

    batcher = StepBatcher(Decoder(), max_rows=8, max_window_s=30.0, name="vae", method="decode", min_window_s=0.005)
    batcher._call_ema_s = 30.0  # as if each call took 30 s: the gather window is then 30 s
    try:
        with batcher.session() as session:
            started = time.monotonic()
            out = session.request(StepRequest(torch.ones(1, 2), None, {}))
            waited = time.monotonic() - started
        assert torch.equal(out, torch.full((1, 2), 2.0)) and waited < 10.0
    finally:
        batcher.close()


def test_a_decode_waits_for_company_only_while_jobs_are_still_denoising():
    """The decode batcher's minimum window is for jobs finishing the same step as this one: with
    nobody left in the denoiser's loop there is nobody to wait for."""
    from worker.batching import StepBatcher, StepRequest

    class Decoder(torch.nn.Module):
        def decode(self, z, return_dict=False):
            return (z + 1,)

    denoiser = StepBatcher(torch.nn.Identity(), name="unet")
    decoder = StepBatcher(Decoder(), name="vae", method="decode", min_window_s=3.0, upstream=denoiser)

    def decode_alone():
        with decoder.session() as session:
            started = time.monotonic()
            session.request(StepRequest(torch.zeros(1, 2), None, {}))
            return time.monotonic() - started

    try:
        assert decode_alone() < 1.5
        with denoiser.session() as other:
            other.join()  # another job is still denoising: it may finish this step too
            assert decode_alone() >= 3.0
    finally:
        decoder.close()
        denoiser.close()


def test_concurrent_prompt_encoding_matches_sequential(sd):
    """Jobs share a cached tokenizer whose padding settings are per-call state (regression: a
    concurrent job's negative prompt came out 2 tokens long)."""
    prompts = [f"a {c} circle at the top" for c in ("red", "blue", "green", "yellow")]
    with torch.no_grad():
        expected = [sd.encode_prompt(p, 1, True, None) for p in prompts]
    for _ in range(10):
        got = [None] * len(prompts)

        def encode(k):
            with torch.no_grad():
                got[k] = sd.encode_prompt(prompts[k], 1, True, None)

        threads = [threading.Thread(target=encode, args=(k,)) for k in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for a, b in zip(expected, got):
            assert torch.equal(a.prompt_embeds, b.prompt_embeds)
            assert torch.equal(a.negative_prompt_embeds, b.negative_prompt_embeds)
