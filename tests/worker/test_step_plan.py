"""The pipeline owns its step plan: the worker's step hook sees exactly 1 … `pipe.planned_steps(...)`,
one per denoiser call, for every family, task, strength and scheduler order (Heun and DPM-Solver-2
interleave a second evaluation; single-step DPM-Solver++ mixes orders; image tasks skip the first
1 − strength of the schedule, each family with its own rounding). FLUX's pipelines set their own σ
grid, which flow Heun does not take (as in Diffusers), so FLUX is not run with it."""

from __future__ import annotations

import pytest
from PIL import Image

from shared.jobs.params import FluxFields, JobParams, SD3Fields
from tests.pipelines import tiny_flow
from tests.pipelines.tiny import tiny_ddpm_pipeline, tiny_sd_pipeline
from worker.job_pipeline import run_params
from worker.loaded_model import load_model
from worker.pipelines import DiffusionPipeline

SIZE = 32
FAMILY_FIELDS = {"flux": FluxFields(true_cfg_scale=1.0, max_sequence_length=16),
                 "sd3": SD3Fields(max_sequence_length=16)}


def _loaded(folder, name):
    return load_model(name, DiffusionPipeline.from_pretrained(folder), max_rows=8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("step-plan")
    tiny_sd_pipeline().save_pretrained(root / "sd")
    tiny_ddpm_pipeline().save_pretrained(root / "ddpm")
    loaded = {"sd": _loaded(root / "sd", "sd"), "ddpm": _loaded(root / "ddpm", "ddpm"),
              "flux": _loaded(tiny_flow.save_tiny_flux(root / "flux"), "flux"),
              "sd3": _loaded(tiny_flow.save_tiny_sd3(root / "sd3"), "sd3")}
    yield loaded
    for model in loaded.values():
        model.close()


def job(family, task, scheduler, steps, strength=None) -> JobParams:
    prompt = None if task == "unconditional" else "a red cat"
    size = 8 if family == "ddpm" else SIZE  # the tiny DDPM makes 8×8 images only
    return JobParams(model=family, task=task, prompt=prompt, steps=steps, scheduler=scheduler, seed=1,
                     guidance_scale=3.0, width=size, height=size, strength=strength,
                     family_fields=FAMILY_FIELDS.get(family))


def inputs(task):
    if task == "text-to-image" or task == "unconditional":
        return {}
    image = {"image": Image.new("RGB", (SIZE, SIZE), (200, 30, 30))}
    return image | ({"mask_image": Image.new("L", (SIZE, SIZE), 255)} if task == "inpaint" else {})


CASES = [  # family, task, scheduler, steps, strength, the steps expected
    ("ddpm", "unconditional", "ddim", 3, None, 3),
    ("sd", "text-to-image", "euler", 4, None, 4),
    ("sd", "text-to-image", "heun", 3, None, 5),  # 2 calls a step but the first
    ("sd", "text-to-image", "kdpm2", 3, None, 5),
    ("sd", "text-to-image", "dpm_single", 5, None, 5),
    ("sd", "image-to-image", "euler", 10, 0.55, 5),  # int(10 · 0.55) = 5 kept: the product floored
    ("sd", "image-to-image", "euler", 5, 0.3, 1),
    ("sd", "image-to-image", "ddim", 5, 0.8, 4),
    ("sd", "image-to-image", "ddim", 4, 1.0, 4),
    ("sd", "image-to-image", "heun", 4, 0.5, 3),  # 7 timesteps, the first 2 · 2 skipped
    ("sd", "image-to-image", "dpm_single", 6, 0.5, 3),
    ("sd", "inpaint", "euler", 5, 0.6, 3),
    ("sd", "inpaint", "heun", 3, 1.0, 5),
    ("flux", "text-to-image", "flow_euler", 3, None, 3),
    ("flux", "text-to-image", "flow_dpm_single", 4, None, 4),
    ("flux", "image-to-image", "flow_euler", 3, 0.7, 3),  # 3 − int(3 − 2.1): the difference floored
    ("flux", "image-to-image", "flow_dpm_single", 6, 0.5, 3),
    ("flux", "inpaint", "flow_euler", 4, 0.6, 3),
    ("sd3", "text-to-image", "flow_euler", 3, None, 3),
    ("sd3", "text-to-image", "flow_heun", 3, None, 5),
    ("sd3", "image-to-image", "flow_euler", 10, 0.55, 6),
    ("sd3", "image-to-image", "flow_dpm_single", 6, 0.5, 3),
]


@pytest.mark.parametrize("family, task, scheduler, steps, strength, expected", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}-{c[3]}-{c[4]}" for c in CASES])
def test_progress_counts_each_denoiser_call_up_to_exactly_the_plan(models, family, task, scheduler, steps,
                                                                   strength, expected):
    loaded = models[family]
    seen = []
    calls_before = loaded.batcher.stats.job_steps
    run_params(loaded, family, job(family, task, scheduler, steps, strength),
               lambda step, total: seen.append((step, total)), inputs(task))
    assert seen == [(k, expected) for k in range(1, expected + 1)]
    assert loaded.batcher.stats.job_steps - calls_before == expected  # one denoiser call per step


@pytest.mark.parametrize("family", ["sd", "flux", "sd3"])
def test_after_its_last_step_a_job_is_awaited_by_the_decoder_not_the_denoiser(models, family):
    """Jobs finishing at the same step share one decode call: at its last step a job leaves the step
    batch and joins the decode batch (which then waits for it), and leaves that once decoded."""
    loaded = models[family]
    counts = []

    def on_step(step, total):
        counts.append((step, loaded.batcher.jobs_in_loop, loaded.decoder.jobs_in_loop))

    run_params(loaded, family, job(family, "text-to-image", "flow_euler" if family != "sd" else "euler", 3), on_step)
    assert counts == [(1, 1, 0), (2, 1, 0), (3, 0, 1)]
    assert (loaded.batcher.jobs_in_loop, loaded.decoder.jobs_in_loop) == (0, 0)
