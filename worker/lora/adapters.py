"""Adapters on one model (a UNet, a transformer, a text encoder): inject, activate, fuse, remove, export.

Every operation walks the model's LoRA layers (`LoraLinear`, `LoraConv2d`); a layer that loses its
last adapter goes back to the plain layer it replaced.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from worker.lora.errors import LoraError, sample
from worker.lora.formats import LoraTensors
from worker.lora.layer import LoraLayerMixin, LoraWeights, lora_class_for
from worker.lora.naming import adaptable_layers, fused_parts, layer_table


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayerMixin]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraLayerMixin):
            yield name, module


def adapter_names(model: nn.Module) -> list[str]:
    """Adapters loaded into `model`, in load order."""
    names: dict[str, None] = {}
    for _, layer in lora_layers(model):
        names.update(dict.fromkeys(layer.lora.keys()))
    return list(names)


def resolve(model: nn.Module, layers: Mapping[str, LoraTensors], component: str) -> dict[str, LoraTensors]:
    """Map the file's layer names to the model's module names (splitting fused layers); any name the
    model lacks is an error."""
    table = layer_table(model)
    resolved, missing = {}, []
    for name, tensors in layers.items():
        parts = fused_parts(model, name) if name not in table else None
        if parts is not None:
            resolved.update(_split(tensors, parts))
        elif name in table:
            resolved[table[name]] = tensors
        else:
            missing.append(name)
    if missing:
        raise LoraError(f"the LoRA targets layers that {component} ({type(model).__name__}) does not have: "
                        f"{sample(missing)}")
    return resolved


def _split(tensors: LoraTensors, parts: list[tuple[str, int]]) -> dict[str, LoraTensors]:
    """A LoRA on a fused layer as one LoRA per part: the same A and α, B's rows split by width."""
    widths = [width for _, width in parts]
    if tensors.up.shape[0] != sum(widths):
        raise LoraError(f"fused LoRA B has {tensors.up.shape[0]} rows; {[n for n, _ in parts]} need {sum(widths)}")
    ups = tensors.up.split(widths)
    return {name: LoraTensors(tensors.down, up.contiguous(), tensors.alpha) for (name, _), up in zip(parts, ups)}


def inject(model: nn.Module, adapter_name: str, layers: Mapping[str, LoraTensors]) -> None:
    """Add adapter `adapter_name` to the named layers (already resolved), wrapping plain layers."""
    if "." in adapter_name or not adapter_name:
        raise LoraError(f"adapter names must be non-empty and contain no '.': {adapter_name!r}")
    for name, tensors in layers.items():
        module = model.get_submodule(name)
        if not isinstance(module, LoraLayerMixin):
            module = lora_class_for(module).wrap(module)
            _replace(model, name, module)
        module.add_adapter(adapter_name, LoraWeights(tensors.down, tensors.up, tensors.alpha))


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def set_active(model: nn.Module, weights: Mapping[str, float]) -> None:
    for _, layer in lora_layers(model):
        layer.set_active(dict(weights))


def active_adapters(model: nn.Module) -> dict[str, float]:
    active: dict[str, float] = {}
    for _, layer in lora_layers(model):
        active.update(layer.active)
    return active


def set_enabled(model: nn.Module, enabled: bool) -> None:
    for _, layer in lora_layers(model):
        layer.enabled = enabled


def fused_names(model: nn.Module) -> set[str]:
    return {name for _, layer in lora_layers(model) for name in layer.fused}


def fuse(model: nn.Module, factors: Mapping[str, float]) -> None:
    for _, layer in lora_layers(model):
        layer.fuse(dict(factors))


def unfuse(model: nn.Module) -> None:
    for _, layer in lora_layers(model):
        layer.unfuse()


def remove(model: nn.Module, names: list[str]) -> None:
    """Delete adapters; layers left with none become plain layers again."""
    for name, layer in list(lora_layers(model)):
        for adapter in names:
            layer.remove_adapter(adapter)
        if not layer.lora:
            _replace(model, name, layer.unwrap())


def unload(model: nn.Module) -> None:
    """Drop every adapter; fused weights stay fused (Diffusers' fuse-then-unload workflow)."""
    for name, layer in list(lora_layers(model)):
        _replace(model, name, layer.unwrap())


def adapter_state_dict(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """One adapter's tensors in the PEFT layout: `<module>.lora_A.weight`, `<module>.lora_B.weight`."""
    tensors = {}
    for name, layer in lora_layers(model):
        if adapter_name in layer.lora:
            tensors[f"{name}.lora_A.weight"] = layer.lora[adapter_name].down
            tensors[f"{name}.lora_B.weight"] = layer.lora[adapter_name].up
    if not tensors:
        raise LoraError(f"{type(model).__name__} has no adapter {adapter_name!r}")
    return tensors


def adapter_metadata(model: nn.Module, adapter_name: str) -> dict:
    """PEFT `LoraConfig` fields of one adapter: the commonest rank and α, per-layer exceptions as patterns."""
    found = [(name, layer.lora[adapter_name]) for name, layer in lora_layers(model) if adapter_name in layer.lora]
    r = Counter(w.rank for _, w in found).most_common(1)[0][0]
    alpha = Counter(w.alpha for _, w in found).most_common(1)[0][0]
    return {
        "r": r, "lora_alpha": alpha, "target_modules": sorted(name for name, _ in found),
        "rank_pattern": {name: w.rank for name, w in found if w.rank != r},
        "alpha_pattern": {name: w.alpha for name, w in found if w.alpha != alpha},
    }


def adapter_bytes(model: nn.Module, adapter_name: str) -> int:
    """Memory held by one adapter's tensors in `model`."""
    return sum(t.numel() * t.element_size() for _, layer in lora_layers(model) if adapter_name in layer.lora
               for t in (layer.lora[adapter_name].down, layer.lora[adapter_name].up))


def init_adapter(model: nn.Module, adapter_name: str, targets: Sequence[str], rank: int,
                 alpha: float | None = None, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """A new trainable adapter on every Linear/Conv2d whose name ends with one of `targets`, active.

    A starts Kaiming-uniform and B at zero (Hu et al. 2021), so the model is unchanged until trained.
    Returns the tensors to optimise (A and B of each layer, `requires_grad`); the base weights are
    the caller's to freeze. Save the result with `adapter_state_dict` / `LoraLoaderMixin.save_lora_adapter`.
    """
    chosen = {name: module for name, module in adaptable_layers(model) if name.endswith(tuple(targets))}
    if not chosen:
        raise LoraError(f"no Linear/Conv2d layer of {type(model).__name__} ends with any of {list(targets)}")
    layers = {}
    for name, module in chosen.items():
        base = module.weight  # (out, in[, k, k])
        down = torch.empty(rank, *base.shape[1:], dtype=torch.float32)
        nn.init.kaiming_uniform_(down, a=5**0.5, generator=generator)
        up = torch.zeros(base.shape[0], rank, *([1] * (base.ndim - 2)))
        layers[name] = LoraTensors(down.to(base.dtype), up.to(base.dtype), alpha)
    inject(model, adapter_name, layers)
    set_active(model, {**active_adapters(model), adapter_name: 1.0})
    tensors = [t for _, layer in lora_layers(model) if adapter_name in layer.lora
               for t in (layer.lora[adapter_name].down, layer.lora[adapter_name].up)]
    return [t.requires_grad_(True) for t in tensors]
