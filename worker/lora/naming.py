"""Names a LoRA file may use for a model's layers, mapped to the model's own module names.

A model's adaptable layers (Linear, Conv2d) are indexed under:
- their dotted module name (Diffusers / PEFT layout: `down_blocks.1.attentions.0.proj_in`);
- the same name flattened with `_` (kohya / A1111: `down_blocks_1_attentions_0_proj_in`) — looked
  up in this table rather than split back, since module names contain `_` themselves;
- aliases from `ALIAS_RULES`: the original-LDM ("SGM") UNet names kohya uses for SDXL
  (`input_blocks_4_1_transformer_blocks_0_attn1_to_q`), transformers-4 CLIP names
  (`text_model.encoder.layers.0...`) for transformers-5 text encoders that dropped `text_model`,
  and Black Forest Labs' FLUX names kohya uses (`double_blocks_0_img_attn_proj`).

BFL's FLUX fuses some projections that Diffusers splits: one LoRA on `img_attn.qkv` is three
LoRAs on `to_q`, `to_k`, `to_v` sharing A, with B's rows split by each layer's width
(`fused_table`, `FUSED_RULES`).
"""

from __future__ import annotations

import re
from typing import Callable, Iterator

from torch import nn

from worker.lora.layer import lora_class_for

# Diffusers resnet layer -> its name inside an LDM ResBlock (Sequential indices included).
_SGM_RESNET = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
               "conv_shortcut": "skip_connection"}
# Diffusers top-level layers -> LDM names.
_SGM_TOP = {"conv_in": "input_blocks.0.0", "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
            "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
            "add_embedding.linear_2": "label_emb.0.2"}


def adaptable_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(dotted name, module) of every layer a LoRA can adapt."""
    for name, module in model.named_modules():
        if name and lora_class_for(module) is not None:
            yield name, module


def layer_table(model: nn.Module) -> dict[str, str]:
    """Every accepted spelling (dotted, flat, aliases and their flat forms) -> dotted module name."""
    names = [name for name, _ in adaptable_layers(model)]
    table: dict[str, str] = {}
    for name in names:
        spellings = [name, *(alias for rule in ALIAS_RULES for alias in rule(model, name))]
        for spelling in spellings:
            table.setdefault(spelling, name)
            table.setdefault(spelling.replace(".", "_"), name)
    return table


def _clip_text_model_alias(model: nn.Module, name: str) -> list[str]:
    """transformers 5's CLIP text models have no `text_model.` level; files written for 4.x do."""
    has_level = hasattr(model, "text_model")
    return [f"text_model.{name}"] if not has_level and type(model).__name__.startswith("CLIPText") else []


def _sgm_unet_alias(model: nn.Module, name: str) -> list[str]:
    """The LDM/SGM name of a `UNet2DConditionModel` layer: input_blocks / middle_block / output_blocks."""
    config = getattr(model, "config", None)
    per_block = config.get("layers_per_block") if config is not None and hasattr(config, "get") else None
    if not isinstance(per_block, int) or "down_block_types" not in config:
        return []
    if name in _SGM_TOP:
        return [_SGM_TOP[name]]
    for pattern, build in _SGM_RULES:
        match = re.fullmatch(pattern, name)
        if match:
            return [build(model, per_block + 1, *match.groups())]
    return []


def _bfl_flux_alias(model: nn.Module, name: str) -> list[str]:
    """BFL's name of a `FluxTransformer2DModel` layer (original FLUX checkpoints, kohya FLUX LoRAs)."""
    if type(model).__name__ != "FluxTransformer2DModel":
        return []
    for pattern, template in _BFL_RULES:
        match = re.fullmatch(pattern, name)
        if match:
            return [template.format(*match.groups())]
    return []


_BFL_RULES: tuple[tuple[str, str], ...] = (
    (r"transformer_blocks\.(\d+)\.attn\.to_out\.0", "double_blocks.{0}.img_attn.proj"),
    (r"transformer_blocks\.(\d+)\.attn\.to_add_out", "double_blocks.{0}.txt_attn.proj"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj", "double_blocks.{0}.img_mlp.0"),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2", "double_blocks.{0}.img_mlp.2"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.0\.proj", "double_blocks.{0}.txt_mlp.0"),
    (r"transformer_blocks\.(\d+)\.ff_context\.net\.2", "double_blocks.{0}.txt_mlp.2"),
    (r"transformer_blocks\.(\d+)\.norm1\.linear", "double_blocks.{0}.img_mod.lin"),
    (r"transformer_blocks\.(\d+)\.norm1_context\.linear", "double_blocks.{0}.txt_mod.lin"),
    (r"single_transformer_blocks\.(\d+)\.proj_out", "single_blocks.{0}.linear2"),
    (r"single_transformer_blocks\.(\d+)\.norm\.linear", "single_blocks.{0}.modulation.lin"),
    (r"time_text_embed\.timestep_embedder\.linear_1", "time_in.in_layer"),
    (r"time_text_embed\.timestep_embedder\.linear_2", "time_in.out_layer"),
    (r"time_text_embed\.text_embedder\.linear_1", "vector_in.in_layer"),
    (r"time_text_embed\.text_embedder\.linear_2", "vector_in.out_layer"),
    (r"time_text_embed\.guidance_embedder\.linear_1", "guidance_in.in_layer"),
    (r"time_text_embed\.guidance_embedder\.linear_2", "guidance_in.out_layer"),
    (r"context_embedder", "txt_in"),
    (r"x_embedder", "img_in"),
    (r"proj_out", "final_layer.linear"),
)

# Fused BFL FLUX layer -> the Diffusers layers it splits into, in B's row order ({0}: block index).
FUSED_RULES: dict[str, tuple[str, ...]] = {
    r"double_blocks_(\d+)_img_attn_qkv": ("transformer_blocks.{0}.attn.to_q", "transformer_blocks.{0}.attn.to_k",
                                          "transformer_blocks.{0}.attn.to_v"),
    r"double_blocks_(\d+)_txt_attn_qkv": ("transformer_blocks.{0}.attn.add_q_proj",
                                          "transformer_blocks.{0}.attn.add_k_proj",
                                          "transformer_blocks.{0}.attn.add_v_proj"),
    r"single_blocks_(\d+)_linear1": ("single_transformer_blocks.{0}.attn.to_q", "single_transformer_blocks.{0}.attn.to_k",
                                     "single_transformer_blocks.{0}.attn.to_v", "single_transformer_blocks.{0}.proj_mlp"),
}


def fused_parts(model: nn.Module, name: str) -> list[tuple[str, int]] | None:
    """For a fused layer name (flat or dotted), the (module name, output width) of each part; else None."""
    if type(model).__name__ != "FluxTransformer2DModel":
        return None
    flat = name.replace(".", "_")
    for pattern, targets in FUSED_RULES.items():
        match = re.fullmatch(pattern, flat)
        if match:
            parts = [target.format(*match.groups()) for target in targets]
            return [(part, model.get_submodule(part).out_features) for part in parts]
    return None


def _resnet(rest: str) -> str:
    return _SGM_RESNET.get(rest, rest)


def _up_sampler(model: nn.Module, stride: int, i: str) -> str:
    has_attention = hasattr(model.up_blocks[int(i)], "attentions") and model.up_blocks[int(i)].attentions is not None
    return f"output_blocks.{int(i) * stride + stride - 1}.{2 if has_attention else 1}.conv"


# (Diffusers name pattern, builder(model, layers per LDM level, *groups) -> LDM name).
_SGM_RULES: tuple[tuple[str, Callable[..., str]], ...] = (
    (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", lambda m, s, i, j, r: f"input_blocks.{int(i) * s + int(j) + 1}.0.{_resnet(r)}"),
    (r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", lambda m, s, i, j, r: f"input_blocks.{int(i) * s + int(j) + 1}.1.{r}"),
    (r"down_blocks\.(\d+)\.downsamplers\.0\.conv", lambda m, s, i: f"input_blocks.{(int(i) + 1) * s}.0.op"),
    (r"mid_block\.resnets\.(\d+)\.(.+)", lambda m, s, j, r: f"middle_block.{2 * int(j)}.{_resnet(r)}"),
    (r"mid_block\.attentions\.0\.(.+)", lambda m, s, r: f"middle_block.1.{r}"),
    (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", lambda m, s, i, j, r: f"output_blocks.{int(i) * s + int(j)}.0.{_resnet(r)}"),
    (r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", lambda m, s, i, j, r: f"output_blocks.{int(i) * s + int(j)}.1.{r}"),
    (r"up_blocks\.(\d+)\.upsamplers\.0\.conv", lambda m, s, i: _up_sampler(m, s, i)),
)

# Extra spellings of a layer name, per model family.
ALIAS_RULES: tuple[Callable[[nn.Module, str], list[str]], ...] = (_clip_text_model_alias, _sgm_unet_alias,
                                                                  _bfl_flux_alias)
