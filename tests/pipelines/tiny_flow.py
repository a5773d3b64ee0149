"""Tiny FLUX and SD3 pipelines built offline with `diffusers` (the oracle), for parity tests.

Each builder seeds torch before every module, so two calls give identical weights, and the
result saves in the Diffusers layout for Kiln to load:

    from tests.pipelines.tiny_flow import tiny_flux_pipeline, save_tiny_flux
    ref = tiny_flux_pipeline(guidance_embeds=True)   # a diffusers FluxPipeline
    folder = save_tiny_flux(tmp_path)                  # the same weights on disk

Text side: the CLIP tokenizer and encoders come from `tests.pipelines.tiny`; the T5 tokenizer is
a `tokenizers` Unigram model over `tiny.WORDS` (Metaspace pre-tokenizer, `</s>` appended by a
template) wrapped as `T5TokenizerFast`, and the T5 encoder a 2-layer gated-gelu `T5EncoderModel`
(d_model 32). Latent side: a 16-channel `AutoencoderKL` with FLUX's `shift_factor` (scale factor
2, so 32×32 images have 16×16 latents) and 2+2-block transformers with 2 heads of 16 (FLUX) or
2 heads of 8 (SD3, patch 2).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.pipelines.tiny import WORDS, tiny_text_encoder, tiny_tokenizer

T5_DIM = 32
CLIP_DIM = 8
LATENT_CHANNELS = 16


def tiny_t5_tokenizer(model_max_length: int = 512):
    """An offline `T5TokenizerFast`: `<pad>`=0, `</s>`=1, `<unk>`=2, then `▁word` pieces and letters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    letters = sorted({c for w in WORDS for c in w} | set("abcdefghijklmnopqrstuvwxyz"))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -1.0) for w in WORDS] + [(c, -3.0) for c in letters] + [(f"▁{c}", -3.5) for c in letters]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=model_max_length, extra_ids=0,
    )


def tiny_t5_encoder(seed: int = 3):
    """A 2-layer, 4-head `T5EncoderModel` with d_model 32 (gated-gelu, like T5 v1.1 / FLUX's T5-XXL)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=128, d_model=T5_DIM, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0, dropout_rate=0.0,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def tiny_flow_vae(seed: int = 0, shift_factor: float | None = 0.1159, scaling_factor: float = 0.3611):
    """A 16-channel `AutoencoderKL` without quant convs (FLUX/SD3 layout), scale factor 2."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(4, 8), in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
        norm_num_groups=2, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=32, shift_factor=shift_factor, scaling_factor=scaling_factor,
        use_quant_conv=False, use_post_quant_conv=False,
    ).eval()


def tiny_flux_transformer(guidance_embeds: bool = True, seed: int = 0):
    """A diffusers `FluxTransformer2DModel`: 2 double + 2 single blocks, 2 heads × 16, RoPE axes (4, 6, 6)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=LATENT_CHANNELS * 4, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=T5_DIM, pooled_projection_dim=CLIP_DIM,
        guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
    ).eval()


def flux_scheduler():
    """FLUX.1-dev's scheduler config: dynamic shifting between μ 0.5 (256 tokens) and 1.15 (4096)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )


def flux_components(guidance_embeds: bool = True) -> dict:
    """The components of a tiny FLUX pipeline (diffusers' transformer and VAE)."""
    return dict(
        scheduler=flux_scheduler(), vae=tiny_flow_vae(), text_encoder=tiny_text_encoder(hidden=CLIP_DIM, seed=1),
        tokenizer=tiny_tokenizer(), text_encoder_2=tiny_t5_encoder(), tokenizer_2=tiny_t5_tokenizer(),
        transformer=tiny_flux_transformer(guidance_embeds),
    )


def tiny_flux_pipeline(guidance_embeds: bool = True, task: str = "text-to-image"):
    """A diffusers FLUX pipeline (`task`: text-to-image, image-to-image or inpaint) of ~180k random weights.

    `guidance_embeds=True` is FLUX.1-dev-like (embedded guidance), False FLUX.1-schnell-like.
    """
    import diffusers

    classes = {
        "text-to-image": diffusers.FluxPipeline,
        "image-to-image": diffusers.FluxImg2ImgPipeline,
        "inpaint": diffusers.FluxInpaintPipeline,
    }
    return classes[task](**flux_components(guidance_embeds))


def save_tiny_flux(folder: str | Path, guidance_embeds: bool = True) -> Path:
    """Write a tiny FLUX text-to-image pipeline in the Diffusers layout; returns the folder."""
    tiny_flux_pipeline(guidance_embeds).save_pretrained(folder)
    return Path(folder)


def tiny_sd3_transformer(sd35: bool = False, seed: int = 0):
    """A diffusers `SD3Transformer2DModel`, patch 2, 2 blocks; `sd35` adds SD3.5's RMS qk-norm and a
    dual-attention (MMDiT-X) first block."""
    from diffusers import SD3Transformer2DModel

    extra = dict(qk_norm="rms_norm", dual_attention_layers=(0,)) if sd35 else {}
    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=LATENT_CHANNELS, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=T5_DIM, caption_projection_dim=16,
        pooled_projection_dim=2 * CLIP_DIM, out_channels=LATENT_CHANNELS, pos_embed_max_size=32, **extra,
    ).eval()


def sd3_scheduler():
    """SD3's scheduler config: a fixed shift of 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=3.0)


def sd3_components(sd35: bool = False, with_t5: bool = True) -> dict:
    """The components of a tiny SD3 pipeline; `with_t5=False` drops the T5 encoder (zeros instead)."""
    return dict(
        scheduler=sd3_scheduler(), vae=tiny_flow_vae(shift_factor=0.0609, scaling_factor=1.5305),
        text_encoder=tiny_text_encoder(hidden=CLIP_DIM, projection_dim=CLIP_DIM, seed=1), tokenizer=tiny_tokenizer(),
        text_encoder_2=tiny_text_encoder(hidden=CLIP_DIM, projection_dim=CLIP_DIM, seed=2),
        tokenizer_2=tiny_tokenizer(),
        text_encoder_3=tiny_t5_encoder() if with_t5 else None, tokenizer_3=tiny_t5_tokenizer() if with_t5 else None,
        transformer=tiny_sd3_transformer(sd35),
    )


def tiny_sd3_pipeline(sd35: bool = False, with_t5: bool = True, task: str = "text-to-image"):
    """A diffusers SD3 pipeline (`task`: text-to-image or image-to-image)."""
    import diffusers

    classes = {
        "text-to-image": diffusers.StableDiffusion3Pipeline,
        "image-to-image": diffusers.StableDiffusion3Img2ImgPipeline,
    }
    return classes[task](**sd3_components(sd35, with_t5))


def save_tiny_sd3(folder: str | Path, sd35: bool = False, with_t5: bool = True) -> Path:
    """Write a tiny SD3 text-to-image pipeline in the Diffusers layout; returns the folder."""
    tiny_sd3_pipeline(sd35, with_t5).save_pretrained(folder)
    return Path(folder)
