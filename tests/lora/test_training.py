"""What a LoRA trainer needs: a zero-initialised trainable adapter, gradients only into it, a saved file."""

from __future__ import annotations

import torch

from worker.lora import LoraError
from worker.lora.adapters import init_adapter


def test_trainable_adapter_starts_neutral_learns_and_saves(sd_folder, tmp_path):
    import pytest

    from worker.pipelines import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(sd_folder)
    unet = pipe.unet.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    x, t, text = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([10, 500]), torch.randn(2, 77, 8, generator=g)
    before = unet(x, t, encoder_hidden_states=text).sample.detach()
    tensors = init_adapter(unet, "pink", ["to_q", "to_v", "proj_in"], rank=4, alpha=4.0,
                           generator=torch.Generator().manual_seed(1))
    assert torch.equal(unet(x, t, encoder_hidden_states=text).sample.detach(), before)  # B = 0
    optimiser = torch.optim.SGD(tensors, lr=0.5)
    for _ in range(2):
        loss = unet(x, t, encoder_hidden_states=text).sample.square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = unet(x, t, encoder_hidden_states=text).sample.detach()
    assert (after - before).abs().max() > 1e-4 and after.square().mean() < before.square().mean()
    assert all(p.grad is None for p in unet.parameters())  # the base stays frozen
    pipe.save_lora_adapter(tmp_path, "pink")
    fresh = DiffusionPipeline.from_pretrained(sd_folder)
    fresh.load_lora_weights(tmp_path, adapter_name="pink")
    with torch.no_grad():
        assert (fresh.unet(x, t, encoder_hidden_states=text).sample - after).abs().max() < 1e-5
    with pytest.raises(LoraError, match="ends with any of"):
        init_adapter(unet, "none", ["nothing_here"], rank=2)
