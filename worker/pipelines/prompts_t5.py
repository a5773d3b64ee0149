"""Prompts to text states for the flow-matching families: T5 token states (FLUX, SD3) and CLIP pooled
embeddings (FLUX), beside the CLIP token states of `prompts` (SD3 uses `prompts.encode_penultimate`).

Each encoder runs on its own device and dtype (text encoders may live on the CPU); callers move the
results to the denoiser's device.
"""

from __future__ import annotations

from typing import Any

import torch

from worker.pipelines.prompts import run_text_encoder, tokenize

MAX_T5_TOKENS = 512  # FLUX and SD3 train T5 with at most 512 tokens


def check_sequence_length(max_sequence_length: int) -> None:
    if not 0 < max_sequence_length <= MAX_T5_TOKENS:
        raise ValueError(f"max_sequence_length must be between 1 and {MAX_T5_TOKENS}, got {max_sequence_length}")


def encode_t5(text_encoder: Any, tokenizer: Any, texts: list[str], max_sequence_length: int) -> torch.Tensor:
    """T5 encoder states (N, L, D) of the prompts padded (and truncated) to `max_sequence_length`
    tokens, `</s>` included; no attention mask, as FLUX and SD3 were trained."""
    check_sequence_length(max_sequence_length)
    tokens = tokenize(tokenizer, texts, max_sequence_length)
    return run_text_encoder(text_encoder, {"input_ids": tokens["input_ids"]}, hidden_states=False)[0]


def encode_clip_pooled(text_encoder: Any, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """CLIP's pooled output (N, D): the final-layer-normed state at the end-of-text token (FLUX)."""
    tokens = tokenize(tokenizer, texts)
    return run_text_encoder(text_encoder, {"input_ids": tokens["input_ids"]}, hidden_states=False).pooler_output
