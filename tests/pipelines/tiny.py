"""Tiny pipelines built offline with `diffusers` (the oracle), for parity tests anywhere in the suite.

Every builder seeds torch before each module so the random weights are reproducible, and can
save the pipeline in the Diffusers layout (`pipe.save_pretrained(folder)`) for Kiln to load.

    from tests.pipelines.tiny import tiny_sd_pipeline
    ref = tiny_sd_pipeline()            # a diffusers StableDiffusionPipeline
    ref.save_pretrained(tmp_path)       # Kiln loads it with DiffusionPipeline.from_pretrained

A `CLIPTokenizer` is built from a byte-level vocabulary written here (no Hub download): every
byte symbol and its end-of-word form, plus a few merges so common words become single tokens.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from kiln_shapes.tokenizer import byte_symbols

MAX_PIXEL_DIFF = 2e-3  # parity bound on images in [0, 1]
WORDS = ("a", "cat", "dog", "red", "blue", "photo", "of", "the", "painting", "ugly", "blurry")


def _word_merges(word: str) -> list[tuple[str, str]]:
    """Left-to-right merges that turn `word` into the single token `word</w>`."""
    merges, left = [], word[0]
    for i, char in enumerate(word[1:], start=1):
        right = char + ("</w>" if i == len(word) - 1 else "")
        merges.append((left, right))
        left += right
    return merges


def tiny_tokenizer(model_max_length: int = 77):
    """An offline `CLIPTokenizer` (bos 0, eos/pad 1) with ~530 tokens."""
    from transformers import CLIPTokenizer

    symbols = byte_symbols()
    vocab: dict[str, int] = {}
    for token in ["<|startoftext|>", "<|endoftext|>", *symbols, *(s + "</w>" for s in symbols)]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        for left, right in _word_merges(word) if len(word) > 1 else []:
            if (left, right) not in merges:
                merges.append((left, right))
                vocab.setdefault(left + right, len(vocab))
    folder = Path(tempfile.mkdtemp(prefix="kiln-tokenizer-"))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=model_max_length
    )


def tiny_text_encoder(hidden: int = 8, projection_dim: int | None = None, seed: int = 0):
    """A 2-layer CLIP text encoder; with `projection_dim`, the SDXL-style `...WithProjection`."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=hidden, intermediate_size=16,
        num_attention_heads=2, num_hidden_layers=2, vocab_size=1000, max_position_embeddings=77,
        projection_dim=projection_dim or hidden, layer_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection_dim else CLIPTextModel
    return cls(config).eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=32,
    ).eval()


def tiny_sd_unet(in_channels: int = 4, cross_attention_dim: int = 8, seed: int = 0, **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=in_channels,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=cross_attention_dim,
        norm_num_groups=2, attention_head_dim=2, **extra,
    ).eval()


def sd_scheduler():
    """The DDIM config Stable Diffusion 1.x ships (scaled-linear betas, leading spacing, offset 1)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1,
    )


def tiny_sd_pipeline(in_channels: int = 4, inpaint: bool = False):
    """A diffusers SD pipeline (text-to-image, or inpainting) with ~40k random parameters."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    return cls(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(), tokenizer=tiny_tokenizer(),
        unet=tiny_sd_unet(in_channels=in_channels), scheduler=sd_scheduler(), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def tiny_sdxl_pipeline():
    """A diffusers SDXL pipeline: two text encoders (hidden 8 each), pooled 8, time-id embeds 4."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    unet = tiny_sd_unet(
        cross_attention_dim=16, addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 8, use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(seed=1), text_encoder_2=tiny_text_encoder(projection_dim=8, seed=2),
        tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer(), unet=unet, scheduler=scheduler,
    )


def tiny_ddpm_pipeline(scheduler: str = "ddpm"):
    """A diffusers DDPMPipeline: 3-channel 8×8 UNet2DModel with one attention block."""
    from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, block_out_channels=(4, 8), layers_per_block=1,
        norm_num_groups=2, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=4,
    ).eval()
    schedulers = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}
    return DDPMPipeline(unet=unet, scheduler=schedulers[scheduler](num_train_timesteps=100))


def max_diff(a, b) -> float:
    """Largest absolute difference between two arrays/tensors/PIL images."""
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
