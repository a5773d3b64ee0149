"""Layerwise casting: weights stored in a small dtype, cast up one layer at a time to compute.

A model's Linear / Conv / Embedding layers keep their parameters in `storage_dtype` (float16, or
float8 — half or a quarter of float32's memory); right before a layer runs, its parameters are cast
to `compute_dtype`, and right after, back to storage. Only one layer's weights exist in the wide
dtype at any moment. Layers whose dotted name matches a skip pattern (normalisation and the like,
where precision matters most and the weights are small) stay as they are, with their whole subtree.
This is what Diffusers' `ModelMixin.enable_layerwise_casting` does, with the same default patterns.
"""

from __future__ import annotations

import re
from typing import Iterator, Sequence

import torch
from torch import nn

# Layers whose weights are cast (norm layers are left out: their weights are tiny and sensitive).
CASTABLE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                   nn.ConvTranspose3d, nn.Linear, nn.Embedding)
# Module names (regular expressions, searched in the dotted name) that are never cast.
DEFAULT_SKIP_PATTERNS = ("pos_embed", "patch_embed", "norm", "^proj_in$", "^proj_out$")


def castable_layers(model: nn.Module, skip_patterns: Sequence[str],
                    skip_classes: tuple[type, ...] = (), prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """(name, layer) of every castable layer outside the subtrees that a skip pattern or class names."""
    for name, child in model.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, skip_classes) or any(re.search(p, path) for p in skip_patterns):
            continue
        if isinstance(child, CASTABLE_LAYERS):
            yield path, child
        else:
            yield from castable_layers(child, skip_patterns, skip_classes, path)


def apply_layerwise_casting(model: nn.Module, storage_dtype: torch.dtype, compute_dtype: torch.dtype,
                            skip_patterns: Sequence[str], skip_classes: tuple[type, ...] = ()) -> list:
    """Store the castable layers of `model` in `storage_dtype` and cast them to `compute_dtype`
    around each forward call. Returns the hook handles (`handle.remove()` undoes the hooks)."""
    handles = []
    for _, layer in castable_layers(model, tuple(skip_patterns), skip_classes):
        layer.to(dtype=storage_dtype)
        handles.append(layer.register_forward_pre_hook(_caster(compute_dtype)))
        handles.append(layer.register_forward_hook(_caster(storage_dtype)))
    return handles


def _caster(dtype: torch.dtype):
    """A forward (pre-)hook that moves the layer's parameters to `dtype` and leaves the call's
    inputs / output untouched (a hook that returns None changes nothing)."""

    def hook(module: nn.Module, *_: object) -> None:
        module.to(dtype=dtype)

    return hook
