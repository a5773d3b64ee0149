"""`kiln_shapes.lora_train`: the colour split, adapter colours kept out of the base model's tables,
and a few real training steps on the committed model that change only the adapter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kiln_shapes import data
from kiln_shapes.evaluate import judge
from kiln_shapes.lora_train import LoraConfig, colour_split, train_lora

MODEL = Path(__file__).resolve().parents[2] / "models" / "kiln-shapes"


def test_pink_is_an_adapter_colour_not_a_base_one():
    from shared.catalog import SHAPES_VOCABULARY

    assert "pink" not in data.COLOURS and "pink" not in SHAPES_VOCABULARY
    assert data.PALETTE["pink"] == (240, 120, 190) and len(data.all_combinations()) == 972
    image = data.draw(data.Scene("circle", "pink", "large", "in the centre", "white"))
    assert tuple(image[32, 32]) == (240, 120, 190)
    assert judge(image, data.PALETTE).colour == "pink" and judge(image).colour != "pink"


def test_colour_split_holds_out_whole_combinations():
    train, held = colour_split("pink")
    assert len(train) + len(held) == 162 and len(held) == 54 and not set(train) & set(held)
    assert {combo[1] for combo in train + held} == {"pink"}
    with pytest.raises(ValueError, match="unknown colour 'mauve'"):
        colour_split("mauve")


def test_a_few_steps_train_only_the_adapter(tmp_path):
    from safetensors.torch import load_file

    from worker.pipelines import DiffusionPipeline

    cfg = LoraConfig(base=str(MODEL), out_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"), n_images=16,
                     steps=3, batch=4, warmup=1, lr=1e-2, checkpoint_every=2)
    path = train_lora(cfg)
    assert path.name == "pytorch_lora_weights.safetensors"
    weights = load_file(path)
    assert weights and all(k.startswith(("unet.", "text_encoder.")) and ".lora_" in k for k in weights)
    assert any(k.endswith("to_out.0.lora_B.weight") for k in weights)
    assert any(k.startswith("text_encoder.") and k.endswith("out_proj.lora_B.weight") for k in weights)
    assert max(v.abs().max() for k, v in weights.items() if ".lora_B." in k) > 0  # B left zero-init
    assert (tmp_path / "work" / "step-2" / "pytorch_lora_weights.safetensors").is_file()
    pipe = DiffusionPipeline.from_pretrained(MODEL)
    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([500])
    with torch.no_grad():
        context = pipe.text_encoder(pipe.tokenizer(["a small pink circle"], return_tensors="pt").input_ids)[0]
        base = pipe.unet(x, t, encoder_hidden_states=context).sample
        pipe.load_lora_weights(path.parent, adapter_name="pink")
        adapted_context = pipe.text_encoder(pipe.tokenizer(["a small pink circle"], return_tensors="pt").input_ids)[0]
        adapted = pipe.unet(x, t, encoder_hidden_states=adapted_context).sample
    assert (adapted_context - context).abs().max() > 0  # the text-encoder part is loaded and active
    assert np.isfinite(adapted.numpy()).all() and (adapted - base).abs().max() > 0
