"""`DiffusionPipeline.from_pretrained` / `save_pretrained` on local folders."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from tests.pipelines.tiny import MAX_PIXEL_DIFF, max_diff, seeded
from worker.pipelines import DDPMPipeline, DiffusionPipeline, StableDiffusionPipeline
from worker.pipelines.components import UnsupportedComponentError
from worker.pipelines.pipeline_utils import UnsupportedPipelineError
from worker.runtime.hub import MissingFilesError


def edit_index(folder, **changes):
    path = folder / "model_index.json"
    index = json.loads(path.read_text())
    index.update(changes)
    path.write_text(json.dumps(index))


@pytest.fixture
def ddpm_copy(ddpm_saved, tmp_path):
    return shutil.copytree(ddpm_saved[1], tmp_path / "ddpm")


def test_unknown_pipeline_class_lists_supported(ddpm_copy):
    edit_index(ddpm_copy, _class_name="KandinskyV22Pipeline")
    with pytest.raises(UnsupportedPipelineError, match="KandinskyV22Pipeline.*StableDiffusionXLPipeline"):
        DiffusionPipeline.from_pretrained(ddpm_copy)


def test_unknown_component_class_lists_supported(ddpm_copy):
    edit_index(ddpm_copy, unet=["diffusers", "UNet3DConditionModel"])
    with pytest.raises(UnsupportedComponentError, match="UNet3DConditionModel.*UNet2DModel"):
        DiffusionPipeline.from_pretrained(ddpm_copy)


def test_missing_model_index(tmp_path):
    with pytest.raises(MissingFilesError, match="no model_index.json"):
        DiffusionPipeline.from_pretrained(tmp_path)


def test_keyword_components_replace_loaded_ones_without_reading_them(ddpm_saved, ddpm_copy):
    from worker.schedulers import DDIMScheduler

    shutil.rmtree(ddpm_copy / "scheduler")  # must not be needed
    scheduler = DDIMScheduler(num_train_timesteps=100)
    pipe = DiffusionPipeline.from_pretrained(ddpm_copy, scheduler=scheduler)
    assert pipe.scheduler is scheduler


def test_torch_dtype_single_and_per_component(ddpm_saved):
    folder = ddpm_saved[1]
    assert DiffusionPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16).unet.dtype == torch.bfloat16
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype={"unet": torch.float64, "default": torch.float16})
    assert pipe.unet.dtype == torch.float64 and pipe.dtype == torch.float64
    pipe = DiffusionPipeline.from_pretrained(folder, torch_dtype={"default": "bfloat16"})
    assert pipe.unet.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="not a torch dtype"):
        DiffusionPipeline.from_pretrained(folder, torch_dtype="half-ish")
    assert pipe.to(torch.float32).unet.dtype == torch.float32 and pipe.device.type == "cpu"


def test_concrete_class_and_save_roundtrip_through_diffusers(ddpm_saved, tmp_path):
    import diffusers

    pipe = DDPMPipeline.from_pretrained(ddpm_saved[1])
    out = pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline" and index["unet"] == ["diffusers", "UNet2DModel"]
    back = diffusers.DDPMPipeline.from_pretrained(out)
    expected = back(generator=seeded(2), num_inference_steps=3, output_type="np").images
    got = pipe(generator=seeded(2), num_inference_steps=3, output_type="np").images
    assert max_diff(got, expected) < 1e-3


def test_save_with_variant_then_load_it(sd_pipe, tmp_path):
    out = sd_pipe.save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (out / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert (out / "text_encoder" / "model.fp16.safetensors").is_file()
    again = DiffusionPipeline.from_pretrained(out, variant="fp16")
    assert torch.equal(again.unet.conv_in.weight, sd_pipe.unet.conv_in.weight)


def test_sd_save_loads_in_diffusers_and_skips_safety_checker(sd_saved, sd_pipe, tmp_path, caplog):
    import diffusers

    out = sd_pipe.save_pretrained(tmp_path / "sd")
    index = json.loads((out / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"] and index["safety_checker"] == [None, None]
    back = diffusers.StableDiffusionPipeline.from_pretrained(out)
    args = dict(prompt="a red cat", num_inference_steps=2, height=32, width=32, output_type="np")
    assert max_diff(sd_pipe(generator=seeded(), **args).images, back(generator=seeded(), **args).images) < MAX_PIXEL_DIFF
    # a checkpoint that names Diffusers' safety checker still loads, without it
    edit_index(out, safety_checker=["stable_diffusion", "StableDiffusionSafetyChecker"], requires_safety_checker=True)
    with caplog.at_level(logging.INFO, logger="worker.pipelines.pipeline_utils"):
        again = DiffusionPipeline.from_pretrained(out)
    assert again.safety_checker is None and again.config["requires_safety_checker"] is True
    assert "Kiln does not ship it" in caplog.text


def test_sd_rewrites_outdated_scheduler_config(sd_saved, tmp_path):
    folder = shutil.copytree(sd_saved[1], tmp_path / "old")
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config.update(steps_offset=0, clip_sample=True)
    path.write_text(json.dumps(config))
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert pipe.scheduler.config.steps_offset == 1 and pipe.scheduler.config.clip_sample is False
    assert type(pipe) is StableDiffusionPipeline


def test_missing_required_component_is_named(ddpm_copy):
    index = json.loads((ddpm_copy / "model_index.json").read_text())
    del index["scheduler"]
    (ddpm_copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"needs components \['scheduler'\]"):
        DiffusionPipeline.from_pretrained(ddpm_copy)
