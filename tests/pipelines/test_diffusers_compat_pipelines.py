"""What diffusers' own pipeline tests found missing on Kiln (issue 18, bench/diffusers_suite/pipelines.py),
each checked as a contract of its own: names of `encode_prompt`'s outputs, loading and truncation
reports on Diffusers' logger names, Diffusers' error for a missing variant, no autograd in DDPM."""

from __future__ import annotations

import ast
import inspect
import logging
import textwrap

import pytest
import torch

from tests.pipelines import tiny
from worker.pipelines import DDPMPipeline, DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline


def first_return_names(cls) -> list[str]:
    """The names in the first `return` of `cls.encode_prompt`, read from its source as Diffusers'
    tooling reads them (it maps the outputs onto `__call__` keywords by these names)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls.encode_prompt)))
    node = min((n for n in ast.walk(tree) if isinstance(n, ast.Return)), key=lambda n: n.lineno)
    values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
    return [ast.unparse(v) for v in values]


@pytest.mark.parametrize(("cls", "expected"), [
    (StableDiffusionPipeline, ["prompt_embeds", "negative_prompt_embeds"]),
    (StableDiffusionXLPipeline, ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds",
                                 "negative_pooled_prompt_embeds"]),
])
def test_encode_prompt_returns_call_keywords_first(cls, expected):
    assert first_return_names(cls) == expected
    assert set(expected) <= set(inspect.signature(cls.__call__).parameters)


def test_encode_prompt_outputs_drive_a_pipeline_without_text_encoder(sd_pipe):
    args = dict(num_inference_steps=2, guidance_scale=6.0, output_type="pt", height=32, width=32)
    full = sd_pipe("a red cat", generator=torch.Generator().manual_seed(0), **args).images
    outputs = sd_pipe.encode_prompt("a red cat", "cpu", 1, True)
    embeds = dict(zip(first_return_names(StableDiffusionPipeline), outputs))
    bare = StableDiffusionPipeline(**{**sd_pipe.components, "text_encoder": None, "tokenizer": None})
    again = bare(generator=torch.Generator().manual_seed(0), **embeds, **args).images
    assert torch.equal(full, again)


def test_loading_reports_each_component_on_diffusers_logger(sd_saved, caplog):
    with caplog.at_level(logging.INFO, logger="diffusers.pipelines.pipeline_utils"):
        pipe = DiffusionPipeline.from_pretrained(sd_saved[1])
    loaded = [r.getMessage() for r in caplog.records if r.name == "diffusers.pipelines.pipeline_utils"]
    for name, component in pipe.components.items():
        if component is not None:
            assert any(m.startswith(f"Loaded {name} as ") for m in loaded), (name, loaded)


def test_missing_variant_raises_diffusers_value_error(sd_saved):
    from worker.runtime.hub import MissingFilesError

    with pytest.raises(ValueError, match="trying to load the model files of the `variant=fp16`") as error:
        StableDiffusionPipeline.from_pretrained(sd_saved[1], variant="fp16")
    assert isinstance(error.value, MissingFilesError)  # Kiln's own handlers keep catching it


def test_truncation_is_reported_on_the_pipelines_diffusers_logger(sd_pipe, caplog):
    name = "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion"
    with caplog.at_level(logging.WARNING, logger=name):
        sd_pipe.encode_prompt(100 * "@", "cpu", 1, False)
    (record,) = [r for r in caplog.records if r.name == name]
    # 100 symbols + BOS + EOS in 77 places: the last 25 symbols are cut.
    assert record.getMessage().count("@") == 25
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=name):
        sd_pipe.encode_prompt(25 * "@", "cpu", 1, False)
    assert not [r for r in caplog.records if r.name == name]


def test_ddpm_images_carry_no_autograd_graph(ddpm_saved):
    pipe = DDPMPipeline.from_pretrained(ddpm_saved[1])
    images = pipe(num_inference_steps=2, output_type="pt", generator=tiny.seeded(0)).images
    assert not images.requires_grad and images.grad_fn is None


@pytest.mark.parametrize("scheduler", ["EulerDiscreteScheduler", "HeunDiscreteScheduler"])
def test_sdxl_denoising_end_stops_where_diffusers_stops(tmp_path, scheduler):
    import diffusers

    ref = tiny.tiny_sdxl_pipeline()
    ref.scheduler = getattr(diffusers, scheduler).from_config(ref.scheduler.config)
    ref.save_pretrained(tmp_path)
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path)
    args = dict(prompt="a red cat", num_inference_steps=10, denoising_end=0.7, output_type="latent", height=32,
                width=32)
    seen: list[float] = []

    def record(_pipe, _i, t, tensors):
        seen.append(float(t))
        return tensors

    got = pipe(**args, generator=tiny.seeded(0), callback_on_step_end=record).images
    want = ref(**args, generator=tiny.seeded(0)).images
    # 10 "leading" steps of 1000 are 901 … 1; the base keeps t >= round(1000 - 0.7 * 1000) = 300.
    assert min(seen) == 301 and len(seen) == pipe.num_timesteps
    assert tiny.max_diff(got, want) < 1e-4
