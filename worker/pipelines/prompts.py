"""Prompts to CLIP text-encoder states (shared by the SD 1.x/2.x and SDXL pipelines)."""

from __future__ import annotations

import logging
import threading
from typing import Any, Sequence

import torch

logger = logging.getLogger(__name__)

Prompt = str | Sequence[str]


def as_prompt_list(prompt: Prompt) -> list[str]:
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, (list, tuple)) or not all(isinstance(p, str) for p in prompt):
        raise TypeError(f"prompt must be a string or a list of strings, not {type(prompt).__name__}")
    return list(prompt)


def negative_prompts(negative: Prompt | None, batch_size: int) -> list[str]:
    """The negative prompt per sample: "" when absent, a string repeated, or a list of B."""
    if negative is None:
        return [""] * batch_size
    negatives = as_prompt_list(negative)
    if len(negatives) == 1:
        return negatives * batch_size
    if len(negatives) != batch_size:
        raise ValueError(f"negative_prompt has {len(negatives)} entries but prompt has {batch_size}")
    return negatives


# A fast (Rust) tokenizer keeps its padding and truncation settings as state that every call
# rewrites, so concurrent jobs sharing a cached tokenizer would pad with each other's settings
# (seen: 2-token negative prompts). Tokenizing is cheap: one lock serialises it.
_TOKENIZER_LOCK = threading.Lock()


def tokenize(tokenizer: Any, texts: list[str], max_length: int | None = None,
             log: logging.Logger = logger) -> dict[str, torch.Tensor]:
    """Token ids (N, L) padded to `max_length` (default: the tokenizer's, 77 for CLIP), truncated;
    what was cut off is reported on `log` (a pipeline passes its Diffusers-named logger)."""
    max_length = max_length or tokenizer.model_max_length
    with _TOKENIZER_LOCK:
        tokens = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        full = tokenizer(texts, padding="longest", return_tensors="pt").input_ids
    if full.shape[-1] > tokens.input_ids.shape[-1]:
        with _TOKENIZER_LOCK:
            dropped = tokenizer.batch_decode(full[:, max_length - 1 : -1])
        log.warning("prompt truncated to %d tokens; dropped: %s", max_length, dropped)
    return tokens


def run_text_encoder(text_encoder: Any, tokens: dict[str, torch.Tensor], hidden_states: bool) -> Any:
    """Call a transformers CLIP text model on its own device (attention mask only if it wants one)."""
    device = text_encoder.device
    mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        mask = tokens["attention_mask"].to(device)
    return text_encoder(tokens["input_ids"].to(device), attention_mask=mask, output_hidden_states=hidden_states)


def encode_sd(text_encoder: Any, tokenizer: Any, texts: list[str], clip_skip: int | None = None,
              max_length: int | None = None, log: logging.Logger = logger) -> torch.Tensor:
    """SD 1.x/2.x prompt states (N, L, D): the final (layer-normed) hidden states.

    With `clip_skip=k`, the states k layers before the last, passed through the final layer
    norm (the convention of SD front-ends such as A1111).
    """
    tokens = tokenize(tokenizer, texts, max_length, log)
    if clip_skip is None:
        return run_text_encoder(text_encoder, tokens, hidden_states=False)[0]
    output = run_text_encoder(text_encoder, tokens, hidden_states=True)
    # transformers < 5 nests the layers in `.text_model`; 5.x puts them on the model itself.
    final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    return final_norm(output.hidden_states[-(clip_skip + 1)])


def encode_penultimate(text_encoder: Any, tokenizer: Any, texts: list[str], clip_skip: int | None = None,
                       max_length: int | None = None,
                       log: logging.Logger = logger) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDXL prompt states (N, L, D) from the penultimate layer (or `clip_skip` more), without the
    final layer norm; plus the projected pooled embedding (N, P) when the model has a projection."""
    tokens = tokenize(tokenizer, texts, max_length, log)
    output = run_text_encoder(text_encoder, tokens, hidden_states=True)
    states = output.hidden_states[-((clip_skip or 0) + 2)]
    return states, getattr(output, "text_embeds", None)


def repeat_per_image(embeds: torch.Tensor, num_images_per_prompt: int) -> torch.Tensor:
    """(B, ...) -> (B·n, ...), each prompt's copies next to each other."""
    return embeds.repeat_interleave(num_images_per_prompt, dim=0)
