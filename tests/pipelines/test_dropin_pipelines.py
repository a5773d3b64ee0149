"""Kiln's SD/SDXL/DDPM pipelines as drop-ins for Diffusers' (issue 18): the calling contract Diffusers
code relies on, with images compared against diffusers on the same weights where numbers matter."""

from __future__ import annotations

import inspect

import diffusers
import numpy as np
import pytest
import torch

from tests.pipelines import tiny
from worker.pipelines import (
    DDPMPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)


@pytest.fixture(scope="module")
def sdxl_saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdxl")
    tiny.tiny_sdxl_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture
def sd(sd_saved):
    pipe = StableDiffusionPipeline.from_pretrained(sd_saved[1])
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def sdxl(sdxl_saved):
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_saved)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_args(seed=0, **extra):
    args = dict(prompt="a red circle", num_inference_steps=2, guidance_scale=6.0, output_type="np", height=32,
                width=32, generator=torch.Generator().manual_seed(seed))
    return {**args, **extra}


def test_progress_bar_is_off_unless_configured(sd, capsys):
    sd.set_progress_bar_config(disable=False, desc="steps")
    capsys.readouterr()
    sd(**call_args())
    assert "steps" in capsys.readouterr().err
    sd.set_progress_bar_config(disable=True)
    sd(**call_args())
    assert "steps" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="iterable or a total"):
        sd.progress_bar()


def test_save_pretrained_options_round_trip(sd, tmp_path):
    sd.save_pretrained(tmp_path, safe_serialization=False, max_shard_size="20KB", variant="fp16")
    unet_files = sorted(p.name for p in (tmp_path / "unet").iterdir())
    assert "diffusion_pytorch_model.bin.index.fp16.json" in unet_files
    assert any(name.startswith("diffusion_pytorch_model.fp16-00001-of-") for name in unet_files)
    again = StableDiffusionPipeline.from_pretrained(tmp_path, variant="fp16")
    again.set_progress_bar_config(disable=True)
    assert np.abs(sd(**call_args()).images - again(**call_args()).images).max() < 1e-6
    with pytest.raises(ValueError, match="push_to_hub"):
        sd.save_pretrained(tmp_path, push_to_hub=True)


def test_encode_prompt_has_diffusers_signature_and_returns(sd):
    names = list(inspect.signature(sd.encode_prompt).parameters)
    assert names[:9] == ["prompt", "device", "num_images_per_prompt", "do_classifier_free_guidance",
                         "negative_prompt", "prompt_embeds", "negative_prompt_embeds", "lora_scale", "clip_skip"]
    ref = diffusers.StableDiffusionPipeline(**{k: v for k, v in tiny.tiny_sd_pipeline().components.items()})
    embeds, negative = sd.encode_prompt("a red circle", "cpu", 2, True, negative_prompt="blurry")
    ref_embeds, ref_negative = ref.encode_prompt("a red circle", "cpu", 2, True, negative_prompt="blurry")
    assert torch.allclose(embeds, ref_embeds, atol=1e-5) and torch.allclose(negative, ref_negative, atol=1e-5)
    embeds, negative = sd.encode_prompt("a", "cpu", 1, False)
    assert embeds.shape == (1, 77, 8) and negative is None


def test_encode_prompt_kiln_form_still_returns_conditioning(sd):
    cond = sd.encode_prompt("a cat", 2, True, None)
    assert cond.prompt_embeds.shape[0] == 2 and cond.negative_prompt_embeds is not None
    assert sd.encode_prompt("a cat", guided=False).negative_prompt_embeds is None


def test_prompt_embeds_reproduce_the_prompt(sd):
    embeds, negative = sd.encode_prompt("a red circle", "cpu", 1, True)
    args = {k: v for k, v in call_args().items() if k != "prompt"}
    with_embeds = sd(**args, prompt_embeds=embeds, negative_prompt_embeds=negative).images
    assert np.abs(with_embeds - sd(**call_args()).images).max() < 1e-6


def test_sdxl_encode_prompt_returns_four_tensors_that_reproduce_the_prompt(sdxl):
    embeds, negative, pooled, negative_pooled = sdxl.encode_prompt("a red circle", device="cpu")
    assert embeds.shape == (1, 77, 16) and pooled.shape == (1, 8) and negative_pooled.abs().sum() == 0
    args = {k: v for k, v in call_args().items() if k != "prompt"}
    got = sdxl(**args, prompt_embeds=embeds, negative_prompt_embeds=negative, pooled_prompt_embeds=pooled,
               negative_pooled_prompt_embeds=negative_pooled).images
    assert np.abs(got - sdxl(**call_args()).images).max() < 1e-6


def test_callback_sees_exactly_the_requested_tensors_and_can_replace_latents(sd):
    assert sd._callback_tensor_inputs == ["latents", "prompt_embeds", "negative_prompt_embeds"]
    seen = []

    def check(pipe, i, t, tensors):
        seen.append((i, sorted(tensors), pipe.num_timesteps, pipe.guidance_scale, pipe.do_classifier_free_guidance))
        if i == pipe.num_timesteps - 1:
            tensors["latents"] = torch.zeros_like(tensors["latents"])
        return tensors

    out = sd(**{**call_args(), "output_type": "latent"}, callback_on_step_end=check,
             callback_on_step_end_tensor_inputs=sd._callback_tensor_inputs).images
    names = sorted(sd._callback_tensor_inputs)
    assert seen == [(0, names, 2, 6.0, True), (1, names, 2, 6.0, True)]
    assert out.abs().sum() == 0
    with pytest.raises(ValueError, match="not available"):
        sd(**call_args(), callback_on_step_end=check, callback_on_step_end_tensor_inputs=["add_text_embeds"])


def test_interrupt_skips_the_remaining_steps(sd):
    kept = {}

    def stop(pipe, i, t, tensors):
        if i == 1:
            pipe._interrupt = True
            kept["latents"] = tensors["latents"].clone()
        return tensors

    out = sd(**{**call_args(), "num_inference_steps": 5, "output_type": "latent"}, callback_on_step_end=stop).images
    assert sd.interrupt and torch.equal(out, kept["latents"])
    sd(**call_args())
    assert not sd.interrupt  # every call starts uninterrupted


def test_switches_keep_images_or_match_diffusers(sd):
    """Attention slicing and VAE slicing change nothing; FreeU matches diffusers and switches off."""
    plain = sd(**call_args()).images
    sd.enable_attention_slicing()
    sd.enable_vae_slicing()
    assert np.abs(sd(**call_args()).images - plain).max() < 1e-6
    sd.disable_attention_slicing()
    sd.disable_vae_slicing()
    ref = diffusers.StableDiffusionPipeline(**tiny.tiny_sd_pipeline().components)
    ref.set_progress_bar_config(disable=True)
    for pipe in (sd, ref):
        pipe.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    freeu = sd(**call_args()).images
    assert np.abs(freeu - ref(**call_args()).images).max() < 1e-4 and np.abs(freeu - plain).max() > 1e-4
    sd.disable_freeu()
    assert np.abs(sd(**call_args()).images - plain).max() == 0


def test_vae_tiling_and_fused_qkv(sd):
    plain = sd(**call_args()).images
    sd.fuse_qkv_projections()
    assert np.abs(sd(**call_args()).images - plain).max() < 1e-4
    sd.unfuse_qkv_projections()
    sd.enable_vae_tiling()
    assert sd(**call_args(height=64, width=64)).images.shape == (1, 64, 64, 3)
    sd.disable_vae_tiling()


def test_components_build_another_pipeline_class(sd):
    img2img = StableDiffusionImg2ImgPipeline(**sd.components)
    assert img2img.unet is sd.unet and img2img._optional_components == sd._optional_components
    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = img2img(prompt="a", image=image, strength=0.5, num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0))
    assert out.images.shape == (1, 32, 32, 3)


def test_pipeline_output_is_dict_like(sd):
    out = sd(**call_args())
    assert isinstance(out, dict) and list(out.keys()) == ["images"] and out[0] is out["images"] is out.images
    assert out.nsfw_content_detected is None


def test_to_accepts_diffusers_keywords(sd):
    sd.to(torch_dtype=torch.float64)
    assert sd.unet.dtype == sd.vae.dtype == torch.float64
    sd.to("cpu", torch.float32, silence_dtype_warnings=True)
    assert sd.unet.dtype == torch.float32


def test_ddpm_progress_bar_and_save_options(tmp_path):
    pipe = DDPMPipeline.from_pretrained(_saved(tiny.tiny_ddpm_pipeline(), tmp_path / "ref"))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "out", safe_serialization=False)
    assert (tmp_path / "out" / "unet" / "diffusion_pytorch_model.bin").is_file()
    again = DDPMPipeline.from_pretrained(tmp_path / "out")
    args = lambda: dict(batch_size=1, generator=torch.Generator().manual_seed(0), num_inference_steps=2,  # noqa: E731
                        output_type="np")
    assert np.abs(pipe(**args())[0] - again(**args()).images).max() < 1e-6


def _saved(pipe, folder):
    pipe.save_pretrained(folder)
    return folder


def test_from_pipe_shares_components_and_takes_missing_ones(sd):
    img2img = StableDiffusionImg2ImgPipeline.from_pipe(sd)
    assert img2img.vae is sd.vae and img2img.scheduler is sd.scheduler
    assert img2img.config["requires_safety_checker"] == sd.config["requires_safety_checker"]
    ddpm_unet = tiny.tiny_ddpm_pipeline().unet
    with pytest.raises(ValueError, match="needs components"):
        DDPMPipeline.from_pipe(_NoComponents())
    assert DDPMPipeline.from_pipe(sd, unet=ddpm_unet).unet is ddpm_unet


class _NoComponents:
    config: dict = {}
    components: dict = {}


def test_offload_and_xformers_calls_are_accepted(sd):
    """No CUDA here: offloading leaves the pipeline where it is; xFormers changes nothing (SDPA)."""
    plain = sd(**call_args()).images
    sd.enable_model_cpu_offload()
    sd.enable_sequential_cpu_offload()
    sd.enable_xformers_memory_efficient_attention()
    assert sd.device.type == "cpu" and sd._execution_device.type == "cpu"
    assert np.abs(sd(**call_args()).images - plain).max() == 0
    sd.disable_xformers_memory_efficient_attention()


def test_sdxl_callback_tensors_include_added_conditioning(sdxl):
    """SDXL's callback sees (and may replace) the pooled embeds and time ids of both branches."""
    seen = {}

    def look(pipe, i, t, tensors):
        seen.update({k: tuple(v.shape) for k, v in tensors.items()})
        if i == 0:
            tensors["add_time_ids"] = tensors["add_time_ids"] * 0
        return tensors

    plain = sdxl(**call_args()).images
    changed = sdxl(**call_args(), callback_on_step_end=look,
                   callback_on_step_end_tensor_inputs=sdxl._callback_tensor_inputs).images
    assert seen["add_time_ids"] == seen["negative_add_time_ids"] == (1, 6)
    assert seen["add_text_embeds"] == seen["negative_pooled_prompt_embeds"] == (1, 8)
    assert np.abs(changed - plain).max() > 1e-6
