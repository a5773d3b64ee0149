"""FLUX pipelines: parity with diffusers on the same tiny weights (text-to-image, image-to-image,
inpaint), loading what diffusers saved and the other way round."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.pipelines import tiny_flow
from tests.pipelines.tiny import MAX_PIXEL_DIFF, max_diff, seeded
from worker.pipelines import DiffusionPipeline, FluxPipeline

ARGS = dict(num_inference_steps=2, output_type="np", height=32, width=32, max_sequence_length=16)


def kiln_from_pretrained(folder, cls=DiffusionPipeline, **kwargs):
    """Kiln's load of `folder`, with Kiln's own transformer and VAE (never diffusers' modules)."""
    pipe = cls.from_pretrained(folder, **kwargs)
    assert type(pipe.transformer).__module__.startswith("worker.models")
    assert type(pipe.vae).__module__.startswith("worker.models")
    return pipe


def _saved(tmp_path_factory, guidance_embeds: bool):
    import diffusers

    folder = tiny_flow.save_tiny_flux(tmp_path_factory.mktemp("flux"), guidance_embeds)
    ref = diffusers.FluxPipeline.from_pretrained(folder)
    return ref, kiln_from_pretrained(folder), folder


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    """(diffusers FluxPipeline, Kiln's load of the same folder, folder): FLUX.1-dev-like (guidance embeds)."""
    return _saved(tmp_path_factory, guidance_embeds=True)


@pytest.fixture(scope="module")
def flux_schnell(tmp_path_factory):
    return _saved(tmp_path_factory, guidance_embeds=False)


CASES = {
    "plain": dict(prompt="a red cat"),
    "guidance-and-prompt-2": dict(prompt="a red cat", prompt_2="a photo of the dog", guidance_scale=5.0),
    "true-cfg": dict(prompt="a red cat", negative_prompt="ugly", negative_prompt_2="blurry", true_cfg_scale=4.0),
    "batch-non-square": dict(prompt=["a cat", "a dog"], num_images_per_prompt=2, height=48, width=32),
    "custom-sigmas": dict(prompt="a cat", sigmas=[1.0, 0.6, 0.3], num_inference_steps=3),
    "t5-truncated": dict(prompt="a photo of the red cat painting", max_sequence_length=4),
    "generator-list": dict(prompt="a dog", num_images_per_prompt=2, generator=lambda: [seeded(1), seeded(2)]),
}


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_flux_matches_diffusers(flux, kwargs):
    ref, pipe, _ = flux
    assert type(pipe) is FluxPipeline
    args = {**ARGS, **kwargs}
    generator = args.pop("generator", lambda: seeded(3))
    expected = ref(generator=generator(), **args).images
    got = pipe(generator=generator(), **args).images
    assert got.shape == expected.shape
    assert max_diff(got, expected) < MAX_PIXEL_DIFF


def test_flux_without_guidance_embeds_matches_diffusers(flux_schnell):
    ref, pipe, _ = flux_schnell
    args = {**ARGS, "prompt": ["a cat", "a blue dog"], "guidance_scale": 0.0}
    assert max_diff(pipe(generator=seeded(1), **args).images, ref(generator=seeded(1), **args).images) < MAX_PIXEL_DIFF


def test_flux_embeds_latents_and_output_types(flux):
    ref, pipe, _ = flux
    embeds, pooled, _ = ref.encode_prompt("a red cat", prompt_2=None, max_sequence_length=16)
    cond = pipe.encode_conditioning("a red cat", max_sequence_length=16)
    assert torch.allclose(cond.prompt_embeds, embeds, atol=1e-5)
    assert torch.allclose(cond.added["pooled_projections"], pooled, atol=1e-5)
    latents = torch.randn(1, 64, 64, generator=seeded(5))  # packed: (B, 16·16/4, 4·16)
    args = {**ARGS, "prompt_embeds": embeds, "pooled_prompt_embeds": pooled, "latents": latents}
    expected = ref(**args).images
    assert max_diff(pipe(**args).images, expected) < MAX_PIXEL_DIFF
    assert pipe(**{**args, "output_type": "latent"}).images.shape == (1, 64, 64)
    pt = pipe(**{**args, "output_type": "pt"}).images
    assert pt.shape == (1, 3, 32, 32) and max_diff(pt.permute(0, 2, 3, 1), expected) < MAX_PIXEL_DIFF
    pil = pipe(**{**args, "output_type": "pil"}, return_dict=False)[0]
    assert pil[0].size == (32, 32)


def test_flux_callback_sees_and_replaces_latents(flux):
    ref, pipe, _ = flux
    seen = []

    def callback(_pipe, i, t, tensors):
        seen.append((i, float(t), tuple(tensors["latents"].shape), tuple(tensors["prompt_embeds"].shape)))
        return {"latents": tensors["latents"] * 0.5}

    args = {**ARGS, "prompt": "a cat", "callback_on_step_end": callback,
            "callback_on_step_end_tensor_inputs": ["latents", "prompt_embeds"]}
    got = pipe(generator=seeded(2), **args).images
    seen_by_pipe, seen[:] = list(seen), []
    expected = ref(generator=seeded(2), **args).images
    assert [s[0] for s in seen_by_pipe] == [0, 1] and seen_by_pipe[0][2:] == ((1, 64, 64), (1, 16, 32))
    assert np.allclose([s[1] for s in seen_by_pipe], [s[1] for s in seen], atol=1e-3)
    assert max_diff(got, expected) < MAX_PIXEL_DIFF
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        pipe(**{**args, "callback_on_step_end_tensor_inputs": ["noise"]})


def test_flux_calls_transformer_with_diffusers_keywords(flux):
    """The serving worker swaps the transformer for a stand-in: the call must be by keyword, as in diffusers."""
    _, pipe, _ = flux
    calls = []
    real = pipe.transformer

    def spy(**kwargs):
        calls.append(kwargs)
        return real(**kwargs)

    view = FluxPipeline(**{**pipe.components, "transformer": real})
    object.__setattr__(view, "transformer", _Spy(real, spy))
    view(prompt="a cat", negative_prompt="ugly", true_cfg_scale=2.0, **{**ARGS, "num_inference_steps": 1})
    assert set(calls[0]) == {"hidden_states", "timestep", "guidance", "pooled_projections", "encoder_hidden_states",
                             "txt_ids", "img_ids", "joint_attention_kwargs", "return_dict"}
    assert calls[0]["hidden_states"].shape[0] == 2 and calls[0]["timestep"].max() <= 1.0


class _Spy:
    def __init__(self, real, call):
        self._real, self._call = real, call

    def __call__(self, *args, **kwargs):
        if args:
            raise AssertionError("transformer called with positional arguments")
        return self._call(**kwargs)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_flux_rejects_bad_input(flux):
    _, pipe, _ = flux
    with pytest.raises(ValueError, match="exactly one of prompt"):
        pipe(**ARGS)
    with pytest.raises(ValueError, match="max_sequence_length"):
        pipe(prompt="a cat", **{**ARGS, "max_sequence_length": 600})
    with pytest.raises(ValueError, match="pooled_prompt_embeds"):
        pipe(prompt_embeds=torch.zeros(1, 16, 32), **ARGS)
    with pytest.raises(ValueError, match="output_type"):
        pipe(prompt="a cat", **{**ARGS, "output_type": "jpeg"})


def test_diffusers_loads_what_kiln_saved(flux, tmp_path):
    import diffusers

    ref, pipe, _ = flux
    pipe.save_pretrained(tmp_path)
    again = diffusers.FluxPipeline.from_pretrained(tmp_path)
    args = {**ARGS, "prompt": "a dog"}
    assert max_diff(again(generator=seeded(4), **args).images, ref(generator=seeded(4), **args).images) < MAX_PIXEL_DIFF
    reloaded = kiln_from_pretrained(tmp_path)
    assert type(reloaded) is FluxPipeline and type(reloaded.tokenizer_2).__name__.startswith("T5Tokenizer")


# ---------------------------------------------------------------------------------- image-to-image, inpaint
@pytest.fixture(scope="module")
def flux_image_pipes(flux):
    """(diffusers img2img, Kiln img2img, diffusers inpaint, Kiln inpaint) sharing the loaded components."""
    import diffusers

    from worker.pipelines import FluxImg2ImgPipeline, FluxInpaintPipeline

    ref, pipe, _ = flux
    return (diffusers.FluxImg2ImgPipeline(**ref.components), FluxImg2ImgPipeline(**pipe.components),
            diffusers.FluxInpaintPipeline(**ref.components), FluxInpaintPipeline(**pipe.components))


IMAGE_CASES = {
    "strength-0.6": dict(prompt="a red cat", strength=0.6, num_inference_steps=4),
    "true-cfg-batch": dict(prompt=["a cat", "a dog"], negative_prompt=["ugly", "blurry"], true_cfg_scale=2.0,
                           num_images_per_prompt=2, strength=0.7, num_inference_steps=3),
    "full-strength-non-square": dict(prompt="a cat", strength=1.0, height=32, width=48),
}


@pytest.mark.parametrize("kwargs", IMAGE_CASES.values(), ids=IMAGE_CASES.keys())
def test_flux_img2img_matches_diffusers(flux_image_pipes, rgb_image, kwargs):
    ref, pipe, _, _ = flux_image_pipes
    args = {**ARGS, "image": rgb_image, **kwargs}
    expected = ref(generator=seeded(6), **args).images
    got = pipe(generator=seeded(6), **args).images
    assert got.shape == expected.shape
    assert max_diff(got, expected) < MAX_PIXEL_DIFF


@pytest.mark.parametrize("kwargs", IMAGE_CASES.values(), ids=IMAGE_CASES.keys())
def test_flux_inpaint_matches_diffusers(flux_image_pipes, rgb_image, mask_image, kwargs):
    _, _, ref, pipe = flux_image_pipes
    args = {**ARGS, "image": rgb_image, "mask_image": mask_image, **kwargs}
    expected = ref(generator=seeded(8), **args).images
    got = pipe(generator=seeded(8), **args).images
    assert got.shape == expected.shape
    assert max_diff(got, expected) < MAX_PIXEL_DIFF


def test_flux_inpaint_keeps_the_unmasked_half(flux_image_pipes, rgb_image, mask_image):
    from worker.pipelines.flow import unpack_latents

    _, _, _, pipe = flux_image_pipes
    args = {**ARGS, "prompt": "a cat", "image": rgb_image, "strength": 0.5, "num_inference_steps": 4,
            "output_type": "latent"}
    painted = unpack_latents(pipe(mask_image=mask_image, generator=seeded(1), **args).images, 16, 16)
    kept_all = unpack_latents(pipe(mask_image=np.zeros((32, 32), np.float32), generator=seeded(1), **args).images,
                              16, 16)
    # mask columns 16+ of 32 pixels = latent columns 8+: the left half is the image's own latents
    assert torch.equal(painted[..., :8], kept_all[..., :8])
    assert (painted[..., 8:] - kept_all[..., 8:]).abs().max() > 1e-2


def test_flux_image_pipelines_check_input(flux_image_pipes, rgb_image):
    _, img2img, _, inpaint = flux_image_pipes
    with pytest.raises(ValueError, match="needs an `image`"):
        img2img(prompt="a cat", **ARGS)
    with pytest.raises(ValueError, match="mask_image"):
        inpaint(prompt="a cat", image=rgb_image, **ARGS)
    with pytest.raises(ValueError, match="strength"):
        img2img(prompt="a cat", image=rgb_image, strength=1.5, **ARGS)
    with pytest.raises(ValueError, match="leaves no step"):
        img2img(prompt="a cat", image=rgb_image, strength=0.0, **ARGS)


# ---------------------------------------------------------------------------------- placement
def test_model_cpu_offload_moves_each_model_only_while_it_runs(flux):
    """Offload placement checked on the CPU: a spy records every move; the image is unchanged."""
    ref, _, folder = flux
    pipe = kiln_from_pretrained(folder)
    moves = []
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            real_to = module.to
            object.__setattr__(module, "to", lambda *a, _n=name, _to=real_to, **k: (moves.append(
                (_n, str(a[0] if a else k.get("device")))), _to(*a, **k))[1])
    pipe.enable_model_cpu_offload(device="cpu:0")  # "cpu:0" stands for the accelerator, "cpu" is home
    assert pipe.device == torch.device("cpu:0") == pipe._execution_device
    assert sorted(moves) == sorted((n, "cpu") for n in ("vae", "text_encoder", "text_encoder_2", "transformer"))
    moves.clear()
    args = {**ARGS, "prompt": "a red cat"}
    got = pipe(generator=seeded(3), **args).images
    # one model on the device at a time, in the order the stages use them; the previous one goes home
    assert moves == [("text_encoder", "cpu:0"), ("text_encoder", "cpu"), ("text_encoder_2", "cpu:0"),
                     ("text_encoder_2", "cpu"), ("transformer", "cpu:0"), ("transformer", "cpu"), ("vae", "cpu:0")]
    assert pipe._offloader.active is pipe.vae
    assert max_diff(got, ref(generator=seeded(3), **args).images) < MAX_PIXEL_DIFF
    if not torch.cuda.is_available():  # nowhere to offload to: the pipeline stays as it is
        idle = kiln_from_pretrained(folder)
        idle.enable_model_cpu_offload()
        assert getattr(idle, "_offloader", None) is None and idle.device == torch.device("cpu")


def test_text_encoders_in_another_dtype_than_the_transformer(flux):
    """Text encoders may run elsewhere (here bfloat16): states arrive in the transformer's dtype."""
    _, pipe, _ = flux
    view = FluxPipeline(**{**pipe.components, "text_encoder": pipe.text_encoder.to(torch.bfloat16)})
    try:
        cond = view.encode_conditioning("a cat", max_sequence_length=16)
        assert cond.prompt_embeds.dtype == torch.float32 and cond.added["pooled_projections"].dtype == torch.float32
        assert view(prompt="a cat", **ARGS).images.shape == (1, 32, 32, 3)
    finally:
        pipe.text_encoder.to(torch.float32)


@pytest.mark.parametrize("name", ["DPMSolverMultistepScheduler", "UniPCMultistepScheduler"])
def test_flux_with_flow_sigma_solvers_matches_diffusers(flux, name):
    """Schedulers that make their own flow σ grid (`use_flow_sigmas`): FLUX's default σ are not passed."""
    import diffusers

    import worker.schedulers

    ref, pipe, _ = flux
    options = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0)
    ref_swapped = diffusers.FluxPipeline(
        **{**ref.components, "scheduler": getattr(diffusers, name).from_config(ref.scheduler.config, **options)})
    ours = FluxPipeline(**{**pipe.components,
                           "scheduler": getattr(worker.schedulers, name).from_config(pipe.scheduler.config, **options)})
    args = {**ARGS, "prompt": "a cat", "num_inference_steps": 3}
    assert max_diff(ours(generator=seeded(0), **args).images, ref_swapped(generator=seeded(0), **args).images) \
        < MAX_PIXEL_DIFF


def test_flux_image_pipelines_take_given_latents_as_diffusers_does(flux_image_pipes, rgb_image, mask_image):
    """Image-to-image starts from given packed x_t; inpainting takes given spatial latents as its noise ε."""
    ref_img, img2img, ref_inpaint, inpaint = flux_image_pipes
    args = {**ARGS, "prompt": "a cat", "image": rgb_image, "strength": 0.5, "num_inference_steps": 4}
    packed = torch.randn(1, 64, 64, generator=seeded(9))
    assert max_diff(img2img(latents=packed, **args).images, ref_img(latents=packed, **args).images) < MAX_PIXEL_DIFF
    spatial = torch.randn(1, 16, 16, 16, generator=seeded(9))
    args = {**args, "mask_image": mask_image, "latents": spatial}
    assert max_diff(inpaint(generator=seeded(2), **args).images, ref_inpaint(generator=seeded(2), **args).images) \
        < MAX_PIXEL_DIFF


@pytest.mark.parametrize("task, name", [("image-to-image", "FluxImg2ImgPipeline"), ("inpaint", "FluxInpaintPipeline")])
def test_from_pretrained_picks_the_class_model_index_names(tmp_path, task, name):
    tiny_flow.tiny_flux_pipeline(task=task).save_pretrained(tmp_path)
    assert type(kiln_from_pretrained(tmp_path)).__name__ == name


def test_flux_denoise_step_batches_jobs_with_their_own_timesteps_and_guidance(flux):
    """The step batcher's contract: rows of several jobs in one call give each job its own result."""
    from worker.pipelines import Conditioning
    from worker.pipelines.flow_pipeline import FlowSampling

    _, pipe, _ = flux
    a = pipe.encode_prompt("a cat", max_sequence_length=16, negative_prompt="ugly", guided=True)
    b = pipe.encode_prompt("a blue dog", max_sequence_length=16, guided=False).as_guided()
    latents = torch.randn(2, 64, 64, generator=seeded(0))
    t, guidance, cfg = torch.tensor([900.0, 300.0]), torch.tensor([3.5, 5.0]), torch.tensor([4.0, 1.0])
    base = pipe.sampling(latents, a, 32, 32, 0.0, 1.0, None, None, None, ("latents",)).model_kwargs

    def sampling(rows):
        return FlowSampling(cfg[rows], guidance[rows], model_kwargs=base)

    both = pipe.denoise_step(latents, t, Conditioning.cat([a, b]), sampling([0, 1]))
    alone = [pipe.denoise_step(latents[i : i + 1], t[i], c, sampling([i])) for i, c in enumerate((a, b))]
    assert torch.allclose(both, torch.cat(alone), atol=1e-5)
    unguided = pipe.denoise_step(latents[1:], t[1], pipe.encode_conditioning("a blue dog", max_sequence_length=16),
                                 sampling([1]))
    assert torch.allclose(alone[1], unguided, atol=1e-5)
