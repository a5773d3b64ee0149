"""Diffusers' LoRA API on Kiln pipelines: `load_lora_weights`, `set_adapters`, `fuse_lora`, ...

Mixed into a pipeline class, it acts on the pipeline's components named in `lora_components`
(UNet or transformer, text encoders). Public names and arguments follow Diffusers'
`StableDiffusionLoraLoaderMixin`; the computation is Kiln's own (`worker.lora.layer`).
"""

from __future__ import annotations

import functools
import inspect
import os
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from worker.lora import adapters
from worker.lora.errors import LoraError, sample
from worker.lora.files import Source, read_lora, write_lora
from worker.lora.formats import PEFT_COMPONENTS, parse_lora
from worker.lora.routing import lora_scale

HUB_ARGUMENTS = ("revision", "token", "cache_dir", "subfolder")
IGNORED_ARGUMENTS = ("low_cpu_mem_usage", "local_files_only", "force_download", "proxies")
AdapterWeight = float | Mapping[str, float] | None  # one weight, or per component {"unet": 0.5, ...}


class LoraLoaderMixin:
    """LoRA adapters for a pipeline; `lora_components` are the attributes that can carry them."""

    lora_components: tuple[str, ...] = ("unet", "transformer", "text_encoder", "text_encoder_2")

    def lora_models(self) -> dict[str, nn.Module]:
        """The pipeline's adaptable components by name (absent or None ones skipped)."""
        found = {name: getattr(self, name, None) for name in self.lora_components}
        return {name: model for name, model in found.items() if isinstance(model, nn.Module)}

    # ------------------------------------------------------------------ loading
    def load_lora_weights(self, pretrained_model_name_or_path_or_dict: Source, adapter_name: str | None = None,
                          weight_name: str | None = None, *, activate: bool = True, **kwargs: Any) -> str:
        """Load a LoRA (Diffusers/PEFT or kohya layout) as `adapter_name` and make it the active adapter.

        Nothing is loaded unless every key of the file maps to a layer of a component. With
        `activate=False` (Kiln's serving), the active sets are left alone: the adapter applies only
        to rows routed to it (`adapter_rows`), never to concurrent calls. Returns the name.
        """
        unknown = set(kwargs) - set(HUB_ARGUMENTS) - set(IGNORED_ARGUMENTS)
        if unknown:
            raise TypeError(f"load_lora_weights got unexpected arguments {sorted(unknown)}")
        hub = {k: kwargs[k] for k in HUB_ARGUMENTS if k in kwargs}
        state_dict, metadata = read_lora(pretrained_model_name_or_path_or_dict, weight_name, **hub)
        name = adapter_name or f"default_{len(self._loaded_names())}"
        if name in self._loaded_names():
            raise LoraError(f"adapter name {name!r} is already in use; pick another or delete_adapters it first")
        resolved = self._resolve(parse_lora(state_dict, metadata))
        try:
            for component, layers in resolved.items():
                adapters.inject(self.lora_models()[component], name, layers)
        except Exception:  # e.g. a layer whose tensors do not fit: take back what was added
            for model in self.lora_models().values():
                adapters.remove(model, [name])
            raise
        if activate:
            for component in resolved:
                adapters.set_active(self.lora_models()[component], {name: 1.0})
        return name

    def _resolve(self, parsed: Mapping[str, Mapping]) -> dict[str, dict]:
        models = self.lora_models()
        if "unet" in parsed and "unet" not in models and "transformer" in models:
            parsed = {("transformer" if c == "unet" else c): layers for c, layers in parsed.items()}  # kohya FLUX
        absent = [c for c in parsed if c not in models]
        if absent:
            raise LoraError(f"the LoRA has weights for {absent}, which {type(self).__name__} does not have "
                            f"(it has {sorted(models)})")
        return {c: adapters.resolve(models[c], layers, c) for c, layers in parsed.items()}

    def _loaded_names(self) -> list[str]:
        names: dict[str, None] = {}
        for model in self.lora_models().values():
            names.update(dict.fromkeys(adapters.adapter_names(model)))
        return list(names)

    # ------------------------------------------------------------------ choosing adapters
    def set_adapters(self, adapter_names: str | Sequence[str],
                     adapter_weights: AdapterWeight | Sequence[AdapterWeight] = None) -> None:
        """Activate `adapter_names` with weights: one for all, one per adapter, or per component dicts."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self.check_adapters(names)
        weights = _weights_per_name(names, adapter_weights)
        for component, model in self.lora_models().items():
            adapters.set_active(model, {n: _for_component(w, component) for n, w in weights.items()})

    def check_adapters(self, names: Sequence[str]) -> None:
        """Raise `LoraError` naming any adapter that is not loaded."""
        loaded = self._loaded_names()
        missing = [n for n in names if n not in loaded]
        if missing:
            raise LoraError(f"adapters {missing} are not loaded; loaded: {loaded or 'none'}")

    def get_active_adapters(self) -> list[str]:
        active: dict[str, None] = {}
        for model in self.lora_models().values():
            active.update(dict.fromkeys(adapters.active_adapters(model)))
        return list(active)

    def get_list_adapters(self) -> dict[str, list[str]]:
        """Loaded adapters per component."""
        listed = {c: adapters.adapter_names(m) for c, m in self.lora_models().items()}
        return {c: names for c, names in listed.items() if names}

    def disable_lora(self) -> None:
        for model in self.lora_models().values():
            adapters.set_enabled(model, False)

    def enable_lora(self) -> None:
        for model in self.lora_models().values():
            adapters.set_enabled(model, True)

    # ------------------------------------------------------------------ fusing and removing
    def fuse_lora(self, components: Sequence[str] | None = None, lora_scale: float = 1.0, safe_fusing: bool = False,
                  adapter_names: Sequence[str] | None = None) -> None:
        """Add the active (or named) adapters' deltas, times `lora_scale`, into the weights.

        As in Diffusers (PEFT's `scale_layer` before `merge`), the fused adapters keep weights × `lora_scale`
        afterwards, so they apply scaled again after `unfuse_lora`.
        """
        if adapter_names is not None:
            self.check_adapters(adapter_names)
        for component, model in self._components(components).items():
            active = adapters.active_adapters(model)
            chosen = active if adapter_names is None else {n: active.get(n, 1.0) for n in adapter_names}
            fused = adapters.fused_names(model)
            factors = {n: w * lora_scale for n, w in chosen.items() if n not in fused}
            adapters.fuse(model, factors)
            adapters.set_active(model, {**active, **factors})
            if safe_fusing and not all(p.isfinite().all() for p in model.parameters()):
                adapters.unfuse(model)
                raise LoraError(f"fusing the LoRA into {component} gives non-finite weights; not fused")

    def unfuse_lora(self, components: Sequence[str] | None = None) -> None:
        for model in self._components(components).values():
            adapters.unfuse(model)

    def delete_adapters(self, adapter_names: str | Sequence[str]) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self.check_adapters(names)
        for model in self.lora_models().values():
            adapters.remove(model, names)

    def unload_lora_weights(self) -> None:
        """Remove every adapter (fused weights stay in the model)."""
        for model in self.lora_models().values():
            adapters.unload(model)

    def _components(self, components: Sequence[str] | None) -> dict[str, nn.Module]:
        models = self.lora_models()
        if components is None:
            return models
        unknown = [c for c in components if c not in models]
        if unknown:
            raise LoraError(f"no LoRA component {unknown}; this pipeline has {sorted(models)}")
        return {c: models[c] for c in components}

    # ------------------------------------------------------------------ saving
    def save_lora_adapter(self, save_directory: str | os.PathLike, adapter_name: str,
                          weight_name: str | None = None) -> os.PathLike:
        """Write one loaded adapter, all its components, in the Diffusers layout (with α metadata)."""
        self.check_adapters([adapter_name])
        layers, metadata = {}, {}
        for component, model in self.lora_models().items():
            if adapter_name in adapters.adapter_names(model):
                layers[f"{component}_lora_layers"] = adapters.adapter_state_dict(model, adapter_name)
                metadata[f"{component}_lora_adapter_metadata"] = adapters.adapter_metadata(model, adapter_name)
        return self.save_lora_weights(save_directory, weight_name=weight_name, **layers, **metadata)

    @classmethod
    def save_lora_weights(cls, save_directory: str | os.PathLike, weight_name: str | None = None,
                          safe_serialization: bool = True, **components: Any) -> os.PathLike:
        """Diffusers' `save_lora_weights`: `<component>_lora_layers` (tensors by layer key) and optional
        `<component>_lora_adapter_metadata` (a `LoraConfig` dict) for unet, transformer, text encoders."""
        if not safe_serialization:
            raise LoraError("Kiln writes LoRA weights as safetensors only (safe_serialization=True)")
        state_dict, metadata = {}, {}
        for component in PEFT_COMPONENTS:
            for key, tensor in (components.pop(f"{component}_lora_layers", None) or {}).items():
                state_dict[f"{component}.{key}"] = tensor
            for key, value in (components.pop(f"{component}_lora_adapter_metadata", None) or {}).items():
                metadata[f"{component}.{key}"] = value
        if components:
            raise TypeError(f"save_lora_weights got unexpected arguments {sorted(components)}")
        if not state_dict:
            raise LoraError("save_lora_weights needs at least one of " + sample(f"{c}_lora_layers" for c in PEFT_COMPONENTS))
        return write_lora(state_dict, save_directory, weight_name, metadata)


def _weights_per_name(names: list[str], weights: Any) -> dict[str, AdapterWeight]:
    if weights is None or isinstance(weights, (int, float, Mapping)):
        return {n: 1.0 if weights is None else weights for n in names}
    weights = list(weights)
    if len(weights) != len(names):
        raise LoraError(f"{len(names)} adapter names but {len(weights)} adapter_weights")
    return {n: 1.0 if w is None else w for n, w in zip(names, weights)}


def _for_component(weight: AdapterWeight, component: str) -> float:
    if isinstance(weight, Mapping):
        return float(weight.get(component, 1.0))
    return float(weight)


def scaled_by(argument: str) -> Callable:
    """Decorate a pipeline `__call__` to take `argument` (a dict) and run the call under
    `lora_scale(argument["scale"])`: Diffusers' `cross_attention_kwargs={"scale": s}` (SD) or
    `joint_attention_kwargs={"scale": s}` (FLUX, SD3), applied to every adapted layer, text encoders
    included. Other keys go on to the call when it takes `argument` itself, else are an error."""

    def decorate(call: Callable) -> Callable:
        signature = inspect.signature(call)
        passes_on = argument in signature.parameters

        @functools.wraps(call)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            options = dict(kwargs.pop(argument, None) or {})
            scale = options.pop("scale", None)
            if passes_on:
                kwargs[argument] = options or None
            elif options:
                raise ValueError(f"{argument}: Kiln supports only 'scale', got {sorted(options)}")
            with lora_scale(scale):
                return call(self, *args, **kwargs)

        if not passes_on:
            extra = inspect.Parameter(argument, inspect.Parameter.KEYWORD_ONLY, default=None)
            params = [p for p in signature.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
            wrapper.__signature__ = signature.replace(parameters=[*params, extra])
        return wrapper

    return decorate
