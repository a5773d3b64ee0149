"""The kiln-shapes-flux training program on the tiny preset: real steps, an exported FLUX pipeline that
Kiln runs, exact resumption, and the pieces of its recipe (T5 tokenizer, sigma sampling, normalisation)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kiln_shapes import data, flux_models, flux_train
from kiln_shapes.flux_tokenizer import MAX_SEQUENCE_LENGTH, build_t5_tokenizer
from kiln_shapes.flux_train import FluxTrainConfig
from kiln_shapes.tokenizer import vocabulary


def tiny_config(tmp_path, name: str, **overrides) -> FluxTrainConfig:
    fields = dict(out_dir=str(tmp_path / name / "model"), work_dir=str(tmp_path / name), preset="tiny",
                  n_images=16, steps=2, batch=4, warmup=1, checkpoint_every=1, threads=1)
    return FluxTrainConfig(**{**fields, **overrides})


def transformer_weights(model_dir) -> dict[str, torch.Tensor]:
    return load_file(f"{model_dir}/transformer/diffusion_pytorch_model.safetensors")


def test_tiny_training_exports_a_flux_pipeline_kiln_runs(tmp_path):
    from worker.pipelines import DiffusionPipeline, FluxPipeline

    folder = flux_train.run(tiny_config(tmp_path, "a"))
    pipe = DiffusionPipeline.from_pretrained(folder)
    assert isinstance(pipe, FluxPipeline)
    assert not pipe.transformer.config.guidance_embeds
    assert pipe.scheduler.config.shift == flux_models.SHIFT and not pipe.scheduler.config.use_dynamic_shifting
    latents = torch.load(tmp_path / "a" / "latents.pt", weights_only=True)
    shift, scale = flux_train.latent_normalisation(latents)
    assert pipe.vae.config.shift_factor == pytest.approx(shift) and pipe.vae.config.scaling_factor == pytest.approx(scale)
    assert all(t.dtype == torch.float16 for t in transformer_weights(folder).values())
    image = pipe("a red circle in the centre on a white background", num_inference_steps=2, height=64, width=64,
                 max_sequence_length=MAX_SEQUENCE_LENGTH, generator=torch.Generator().manual_seed(0),
                 output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_training_changes_the_weights_and_exports_raw_or_ema(tmp_path):
    cfg = tiny_config(tmp_path, "b", ema_decay=0.5)
    ema = transformer_weights(flux_train.run(cfg))
    raw = transformer_weights(flux_train.export(cfg, flux_train.prepare(cfg), tmp_path / "raw", "raw"))
    assert ema.keys() == raw.keys() and any(not torch.equal(ema[k], raw[k]) for k in ema)
    # adaLN-Zero starts the output projection at 0; two steps of AdamW move it
    assert raw["proj_out.weight"].abs().max() > 0
    with pytest.raises(ValueError, match="'ema' or 'raw'"):
        flux_train.export_checkpoint(cfg, "best")


def test_resumed_training_matches_an_uninterrupted_run(tmp_path):
    straight = flux_train.run(tiny_config(tmp_path, "straight"))
    flux_train.run(tiny_config(tmp_path, "resumed", steps=1))
    resumed = flux_train.run(tiny_config(tmp_path, "resumed"))  # picks up the checkpoint at step 1
    a, b = transformer_weights(straight), transformer_weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_t5_tokenizer_makes_every_caption_word_one_piece():
    tokenizer = build_t5_tokenizer()
    for word in vocabulary():
        assert tokenizer.tokenize(word) == [f"▁{word}"]
    longest = max((data.caption(data.Scene(*c)) for c in data.all_combinations()), key=lambda c: len(c.split()))
    ids = tokenizer(longest).input_ids
    assert len(ids) == len(longest.split()) + 1 <= MAX_SEQUENCE_LENGTH and ids[-1] == tokenizer.eos_token_id
    assert tokenizer("a pink dog").input_ids[-1] == tokenizer.eos_token_id  # other text still tokenizes


def test_sigmas_are_the_schedulers_shift_of_a_logit_normal():
    from worker.schedulers import FlowMatchEulerDiscreteScheduler

    sigma = flux_models.shifted_sigmas(torch.randn(10_000, generator=torch.Generator().manual_seed(0)))
    assert 0 < float(sigma.min()) and float(sigma.max()) < 1
    assert float(sigma.median()) == pytest.approx(flux_models.SHIFT / (1 + flux_models.SHIFT), abs=0.02)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(flux_models.scheduler_config())
    scheduler.set_timesteps(sigmas=[0.5])
    assert float(scheduler.sigmas[0]) == pytest.approx(float(flux_models.shifted_sigmas(torch.tensor(0.0))))


def test_latent_normalisation_centres_and_whitens():
    latents = {"mean": torch.randn(64, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 3 + 2}
    shift, scale = flux_train.latent_normalisation(latents)
    normalised = (latents["mean"] - shift) * scale
    assert float(normalised.mean()) == pytest.approx(0, abs=1e-5) and float(normalised.std()) == pytest.approx(1)
