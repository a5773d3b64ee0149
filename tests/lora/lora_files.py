"""LoRA files for tests: random low-rank weights for chosen layers of the tiny diffusers pipelines,
written in the Diffusers layout through diffusers' own `save_lora_weights`, or with kohya names.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.2", "conv1", "time_emb_proj")
TEXT_TARGETS = ("q_proj", "v_proj", "fc1")
# diffusers 0.42 drops kohya text-encoder attention keys without a word (it renames them to the
# pre-PEFT `to_q_lora` form that no layer matches); the MLP keys load, so oracle tests use those.
KOHYA_TEXT_TARGETS_DIFFUSERS_LOADS = ("fc1", "fc2")


def random_lora(model: nn.Module, targets: tuple[str, ...], rank: int, seed: int,
                std: float = 0.4) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module name: (A, B)} for every Linear/Conv2d whose name ends with one of `targets`."""
    generator = torch.Generator().manual_seed(seed)
    found = {}
    for name, module in model.named_modules():
        if not name.endswith(targets) or not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if isinstance(module, nn.Linear):
            down_shape, up_shape = (rank, module.in_features), (module.out_features, rank)
        else:
            down_shape, up_shape = (rank, module.in_channels, *module.kernel_size), (module.out_channels, rank, 1, 1)
        found[name] = (torch.randn(down_shape, generator=generator) * std,
                       torch.randn(up_shape, generator=generator) * std)
    return found


def peft_layers(lora: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, (down, up) in lora.items():
        tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"] = down, up
    return tensors


def save_diffusers_lora(folder: Path, ref, rank: int, seed: int, alpha: float | None = None,
                        text: bool = True) -> Path:
    """A Diffusers-layout LoRA for `ref`'s UNet (+ text encoders), saved by diffusers; α in the metadata."""
    layers = {"unet_lora_layers": peft_layers(random_lora(ref.unet, UNET_TARGETS, rank, seed))}
    components = ["text_encoder", "text_encoder_2"] if text else []
    for i, name in enumerate(c for c in components if getattr(ref, c, None) is not None):
        layers[f"{name}_lora_layers"] = peft_layers(random_lora(getattr(ref, name), TEXT_TARGETS, rank, seed + 10 + i))
    metadata = {}
    if alpha is not None:
        metadata = {f"{key.removesuffix('_layers')}_adapter_metadata": {"r": rank, "lora_alpha": alpha,
                    "target_modules": sorted({k.rsplit('.lora_', 1)[0] for k in tensors})}
                    for key, tensors in layers.items()}
    type(ref).save_lora_weights(folder, **layers, **metadata)
    return folder


def save_kohya_lora(path: Path, ref, rank: int, seed: int, alpha: float, unet_names=None,
                    text_prefixes: dict[str, str] | None = None, text_targets=TEXT_TARGETS) -> Path:
    """A kohya-layout file: `lora_unet_<flat>.lora_down/lora_up/alpha`, `lora_te*_text_model_<flat>`.

    `unet_names` maps a Diffusers module name to the name kohya writes (default: the same name);
    `text_prefixes` maps text-encoder attributes to their kohya prefixes.
    """
    tensors = {}
    entries = [("lora_unet_", (unet_names or (lambda n: n)), random_lora(ref.unet, UNET_TARGETS, rank, seed))]
    for i, (component, prefix) in enumerate((text_prefixes or {}).items()):
        lora = random_lora(getattr(ref, component), text_targets, rank, seed + 10 + i)
        entries.append((prefix, lambda n: n if n.startswith("text_model.") else f"text_model.{n}", lora))
    for prefix, rename, lora in entries:
        for name, (down, up) in lora.items():
            flat = prefix + rename(name).replace(".", "_")
            tensors[f"{flat}.lora_down.weight"], tensors[f"{flat}.lora_up.weight"] = down, up
            tensors[f"{flat}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))
    return path
