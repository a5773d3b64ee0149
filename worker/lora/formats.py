"""LoRA file layouts, read into one form: per component, per layer name, (down A, up B, α).

Layouts (`LAYOUTS`, tried in order; a file must match one completely):
- Diffusers / PEFT: `<component>.<module>.lora_A.weight`, `.lora_B.weight`, optional
  `<component>.<module>.alpha`; α may also come from the safetensors metadata Diffusers writes
  (`lora_adapter_metadata`: `<component>.lora_alpha`, `.alpha_pattern`, `.r`, `.rank_pattern`).
- kohya / A1111: `lora_unet_<flat name>.lora_down.weight`, `.lora_up.weight`, `.alpha`, with
  `lora_te_` (SD 1.x text encoder), `lora_te1_` / `lora_te2_` (SDXL's two encoders).
- Diffusers before PEFT: attention-processor keys `....attn1.processor.to_q_lora.down.weight`,
  `to_out_lora`, `...q_proj.lora_linear_layer.up.weight`, `...to_q.lora.down.weight`, with or
  without the `unet.` prefix; renamed to the PEFT layout (`_LEGACY_RENAMES`) and read as such.
Without any α the scale is 1 (α = r), the PEFT convention.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from worker.lora.errors import LoraError, sample

# Component names a Diffusers-layout file may address.
PEFT_COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
# kohya name prefix -> pipeline component.
KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2",
                  "lora_te_": "text_encoder", "lora_transformer_": "transformer"}


@dataclass
class LoraTensors:
    """One layer's adapter: down A (r, in[, k, k]), up B (out, r[, 1, 1]), α (None: α = r)."""

    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    alpha: float | None = None


Adapters = dict[str, dict[str, LoraTensors]]  # component -> layer name (as spelled in the file) -> tensors


def parse_lora(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> Adapters:
    """Read a LoRA state dict in any known layout; unknown or unused keys are an error naming them."""
    if not state_dict:
        raise LoraError("the LoRA file holds no tensors")
    for name, matches, read in LAYOUTS:
        if matches(state_dict):
            adapters = read(state_dict, metadata or {})
            _check_complete(adapters, name)
            return adapters
    raise LoraError(
        "unknown LoRA layout: expected Diffusers/PEFT keys '<component>.<module>.lora_A.weight' "
        f"(components {', '.join(PEFT_COMPONENTS)}) or kohya keys 'lora_unet_*.lora_down.weight'; "
        f"got {sample(state_dict)}"
    )


# ---------------------------------------------------------------------- Diffusers / PEFT
_PEFT_KEY = re.compile(r"(?P<component>[a-z_0-9]+?)\.(?P<layer>.+)\.(?:(?P<part>lora_A|lora_B)\.weight|(?P<alpha>alpha))")


def _is_peft(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(".lora_A." in key or ".lora_B." in key for key in state_dict)


def _read_peft(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Adapters:
    adapters: Adapters = {}
    unknown = []
    for key, tensor in state_dict.items():
        match = _PEFT_KEY.fullmatch(key)
        if match is None or match["component"] not in PEFT_COMPONENTS:
            unknown.append(key)
            continue
        entry = adapters.setdefault(match["component"], {}).setdefault(match["layer"], LoraTensors())
        if match["alpha"]:
            entry.alpha = float(tensor.item())
        elif match["part"] == "lora_A":
            entry.down = tensor
        else:
            entry.up = tensor
    if unknown:
        raise LoraError(f"keys that are not Diffusers/PEFT LoRA weights of a known component: {sample(unknown)}")
    _apply_metadata_alphas(adapters, metadata)
    return adapters


def _apply_metadata_alphas(adapters: Adapters, metadata: Mapping[str, Any]) -> None:
    """α from Diffusers' adapter metadata: `alpha_pattern` (PEFT's `(.*\\.)?<key>$` match) else `lora_alpha`."""
    for component, layers in adapters.items():
        default = metadata.get(f"{component}.lora_alpha")
        patterns = metadata.get(f"{component}.alpha_pattern") or {}
        for layer, entry in layers.items():
            if entry.alpha is not None:
                continue
            chosen = next((v for p, v in patterns.items() if re.match(rf"(.*\.)?({p})$", layer)), default)
            entry.alpha = None if chosen is None else float(chosen)


# ---------------------------------------------------------------------- kohya / A1111
_KOHYA_KEY = re.compile(r"(?P<name>lora_[a-z0-9]+_.+?)\.(?:(?P<part>lora_down|lora_up)\.weight|(?P<alpha>alpha))")


def _is_kohya(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(".lora_down." in key or ".lora_up." in key for key in state_dict)


def _read_kohya(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Adapters:
    adapters: Adapters = {}
    unknown = []
    for key, tensor in state_dict.items():
        match = _KOHYA_KEY.fullmatch(key)
        prefix = next((p for p in KOHYA_PREFIXES if match and match["name"].startswith(p)), None)
        if prefix is None:
            unknown.append(key)
            continue
        layer = match["name"][len(prefix):]
        entry = adapters.setdefault(KOHYA_PREFIXES[prefix], {}).setdefault(layer, LoraTensors())
        if match["alpha"]:
            entry.alpha = float(tensor.item())
        elif match["part"] == "lora_down":
            entry.down = tensor
        else:
            entry.up = tensor
    if unknown:
        hint = " (DoRA 'dora_scale' is not supported)" if any("dora_scale" in k for k in unknown) else ""
        raise LoraError(f"keys that are not kohya LoRA weights (lora_unet_/lora_te*_ + lora_down/lora_up/alpha){hint}: "
                        f"{sample(unknown)}")
    return adapters


# ---------------------------------------------------------------------- Diffusers before PEFT
# (pattern, replacement) applied in order; the result is a Diffusers/PEFT key.
_LEGACY_RENAMES: tuple[tuple[str, str], ...] = (
    (r"\.processor\.to_(q|k|v)_lora\.", r".to_\1.lora."),
    (r"\.processor\.to_out_lora\.", r".to_out.0.lora."),
    (r"\.self_attn\.to_(q|k|v)_lora\.", r".self_attn.\1_proj.lora."),
    (r"\.self_attn\.to_out_lora\.", r".self_attn.out_proj.lora."),
    (r"\.lora_linear_layer\.", r".lora."),
    (r"\.lora\.down\.weight$", r".lora_A.weight"),
    (r"\.lora\.up\.weight$", r".lora_B.weight"),
)
_LEGACY_KEY = re.compile(r".*(_lora|\.lora|\.lora_linear_layer)\.(down|up)\.weight$")


def _is_legacy_diffusers(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(_LEGACY_KEY.fullmatch(key) for key in state_dict)


def _read_legacy_diffusers(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, Any]) -> Adapters:
    renamed = {}
    for key, tensor in state_dict.items():
        for pattern, replacement in _LEGACY_RENAMES:
            key = re.sub(pattern, replacement, key)
        if key.split(".", 1)[0] not in PEFT_COMPONENTS:  # the oldest files hold the UNet alone, unprefixed
            key = f"unet.{key}"
        renamed[key] = tensor
    return _read_peft(renamed, metadata)


def _check_complete(adapters: Adapters, layout: str) -> None:
    broken = [f"{component}.{layer}" for component, layers in adapters.items()
              for layer, entry in layers.items() if entry.down is None or entry.up is None]
    if broken:
        raise LoraError(f"{layout} LoRA file: layers without both down (A) and up (B) weights: {sample(broken)}")


# (layout name, detector, reader)
LAYOUTS: tuple[tuple[str, Callable[..., bool], Callable[..., Adapters]], ...] = (
    ("Diffusers/PEFT", _is_peft, _read_peft),
    ("kohya", _is_kohya, _read_kohya),
    ("Diffusers (pre-PEFT)", _is_legacy_diffusers, _read_legacy_diffusers),
)
