"""LoRA layouts and their failure paths: kohya and Diffusers files of the same tensors load the same,
saved adapters round-trip, and bad files are refused whole with the offending keys named."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tests.lora.lora_files import TEXT_TARGETS, UNET_TARGETS, random_lora, save_kohya_lora
from worker.lora import LoraError, LoraLinear
from worker.lora.adapters import lora_layers


@pytest.fixture
def sd(sd_folder):
    from worker.pipelines import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(sd_folder)


@pytest.fixture
def sdxl(sdxl_folder):
    from worker.pipelines import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(sdxl_folder)


def adapter_tensors(pipe, name):
    return {f"{c}.{n}": (layer.lora[name].down, layer.lora[name].up, layer.lora[name].alpha)
            for c, model in pipe.lora_models().items() for n, layer in lora_layers(model) if name in layer.lora}


def diffusers_state(kohya_path, components):
    """The kohya file's tensors rewritten in the Diffusers layout with `.alpha` keys (our reference)."""
    from safetensors.torch import load_file

    from worker.lora.naming import layer_table

    kohya, out = load_file(str(kohya_path)), {}
    for key, tensor in kohya.items():
        flat, part = key.split(".", 1)
        prefix, component = next((p, c) for p, c in components.items() if flat.startswith(p))
        name = layer_table(component[1])[flat[len(prefix):]]
        suffix = {"lora_down.weight": "lora_A.weight", "lora_up.weight": "lora_B.weight", "alpha": "alpha"}[part]
        out[f"{component[0]}.{name}.{suffix}"] = tensor
    return out


def test_kohya_text_encoders_match_the_diffusers_layout(sdxl, tmp_path):
    path = save_kohya_lora(tmp_path / "k.safetensors", sdxl, rank=2, seed=4, alpha=1.0,
                           text_prefixes={"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"})
    sdxl.load_lora_weights(path, adapter_name="kohya")
    components = {"lora_unet_": ("unet", sdxl.unet), "lora_te1_": ("text_encoder", sdxl.text_encoder),
                  "lora_te2_": ("text_encoder_2", sdxl.text_encoder_2)}
    sdxl.load_lora_weights(diffusers_state(path, components), adapter_name="peft")
    kohya, peft = adapter_tensors(sdxl, "kohya"), adapter_tensors(sdxl, "peft")
    assert kohya.keys() == peft.keys() and any(".self_attn.q_proj" in k for k in kohya)
    assert {k: v[2] for k, v in kohya.items()} == {k: v[2] for k, v in peft.items()}
    assert all(torch.equal(kohya[k][0], peft[k][0]) for k in kohya)


def test_saved_adapter_round_trips(sd, tmp_path):
    state = {}
    for component, targets in (("unet", UNET_TARGETS), ("text_encoder", TEXT_TARGETS)):
        for name, (down, up) in random_lora(getattr(sd, component), targets, 3, seed=7).items():
            state[f"{component}.{name}.lora_A.weight"], state[f"{component}.{name}.lora_B.weight"] = down, up
            state[f"{component}.{name}.alpha"] = torch.tensor(1.5 if "conv" in name else 6.0)
    sd.load_lora_weights(state, adapter_name="x")
    sd.save_lora_adapter(tmp_path, "x")
    sd.load_lora_weights(tmp_path, adapter_name="y")  # α comes back through the metadata patterns
    x, y = adapter_tensors(sd, "x"), adapter_tensors(sd, "y")
    assert x.keys() == y.keys() and all(x[k][2] == y[k][2] and torch.equal(x[k][1], y[k][1]) for k in x)


def test_unknown_layout_names_the_keys(sd):
    with pytest.raises(LoraError, match="unknown LoRA layout.*model.diffusion_model.foo"):
        sd.load_lora_weights({"model.diffusion_model.foo.weight": torch.zeros(2)})


def test_missing_layers_are_an_error_and_nothing_is_loaded(sd):
    state = {"unet.down_blocks.0.to_q.lora_A.weight": torch.zeros(2, 4),
             "unet.down_blocks.0.to_q.lora_B.weight": torch.zeros(4, 2)}
    layers = random_lora(sd.text_encoder, ("q_proj",), 2, seed=0)
    for name, (down, up) in layers.items():
        state[f"text_encoder.{name}.lora_A.weight"], state[f"text_encoder.{name}.lora_B.weight"] = down, up
    with pytest.raises(LoraError, match=r"unet \(UNet2DConditionModel\) does not have: down_blocks\.0\.to_q"):
        sd.load_lora_weights(state)
    assert not any(isinstance(m, LoraLinear) for m in sd.text_encoder.modules())  # no partial load


def test_components_the_pipeline_lacks(sd, tmp_path):
    with pytest.raises(LoraError, match="text_encoder_2"):
        sd.load_lora_weights({"text_encoder_2.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 8),
                              "text_encoder_2.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(8, 2)})


@pytest.mark.parametrize("state, message", [
    ({"lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 8, 1, 1)}, "without both"),
    ({"lora_unet_x.lora_down.weight": torch.zeros(1), "lora_unet_x.dora_scale": torch.zeros(1)}, "DoRA"),
    ({"unet.conv_in.lora_A.weight": torch.zeros(2, 4, 3, 3), "unet.conv_in.lora_B.weight": torch.zeros(4, 3, 1, 1)},
     r"do not fit a layer with weight \(4, 4, 3, 3\)"),
], ids=["half-a-layer", "dora", "wrong-shape"])
def test_broken_files(sd, state, message):
    good = {"unet.down_blocks.1.attentions.0.proj_in.lora_A.weight": torch.zeros(2, 8, 1, 1),
            "unet.down_blocks.1.attentions.0.proj_in.lora_B.weight": torch.zeros(8, 2, 1, 1)}
    same_layout = {**good, **state} if any(k.startswith("unet.") for k in state) else state
    with pytest.raises(LoraError, match=message):
        sd.load_lora_weights(same_layout)
    assert sd.get_list_adapters() == {} and not list(lora_layers(sd.unet))  # nothing half-loaded


def test_adapter_names_and_files(sd, tmp_path):
    state = {"unet.conv_in.lora_A.weight": torch.zeros(2, 4, 3, 3), "unet.conv_in.lora_B.weight": torch.zeros(4, 2, 1, 1)}
    assert sd.load_lora_weights(state) == "default_0"
    with pytest.raises(LoraError, match="already in use"):
        sd.load_lora_weights(state, adapter_name="default_0")
    with pytest.raises(LoraError, match=r"adapters \['nope'\] are not loaded; loaded: \['default_0'\]"):
        sd.set_adapters(["nope"])
    save_file(state, str(tmp_path / "one.safetensors"))
    assert sd.load_lora_weights(tmp_path) == "default_1"  # a folder's only safetensors file
    save_file(state, str(tmp_path / "two.safetensors"))
    with pytest.raises(LoraError, match="pass weight_name"):
        sd.load_lora_weights(tmp_path)
    assert sd.load_lora_weights(tmp_path, weight_name="two.safetensors", adapter_name="two") == "two"


def test_pre_peft_names_map_to_the_same_layers(sd):
    unet_layer = "down_blocks.1.attentions.0.transformer_blocks.0.attn2"
    text_layer = "encoder.layers.0"
    a, b = torch.randn(2, 8), torch.randn(8, 2)
    old = {f"{unet_layer}.processor.to_out_lora.down.weight": a, f"{unet_layer}.processor.to_out_lora.up.weight": b,
           f"text_encoder.{text_layer}.self_attn.to_k_lora.down.weight": a,
           f"text_encoder.{text_layer}.self_attn.to_k_lora.up.weight": b,
           f"text_encoder.{text_layer}.mlp.fc2.lora_linear_layer.down.weight": torch.randn(2, 16),
           f"text_encoder.{text_layer}.mlp.fc2.lora_linear_layer.up.weight": b}
    sd.load_lora_weights(old, adapter_name="old")
    assert sorted(adapter_tensors(sd, "old")) == [
        f"text_encoder.{text_layer}.mlp.fc2", f"text_encoder.{text_layer}.self_attn.k_proj", f"unet.{unet_layer}.to_out.0"]
