"""The `ModelMixin` contract Diffusers code (and Diffusers' own model tests) relies on (issue 18).

Checked against diffusers where it has an answer to compare with: which modules carry the
gradient-checkpointing switch, what a custom attention processor receives and computes. The rest
pins the errors Diffusers code matches on (`device_map`, missing weights) and its class markers.
"""

from __future__ import annotations

import inspect

import diffusers
import pytest
import torch

from worker.models import AutoencoderKL, UNet2DConditionModel, UNet2DModel
from worker.models.weights import WeightsNotFoundError

UNET_COND = dict(block_out_channels=(16, 32), norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=(8, 16),
                 layers_per_block=1, sample_size=16)
UNET_2D = dict(block_out_channels=(4, 8), norm_num_groups=2, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
               up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=3, layers_per_block=1, sample_size=16)
NCSNPP = dict(block_out_channels=(32, 64, 64, 64), in_channels=3, out_channels=3, layers_per_block=1, sample_size=16,
              time_embedding_type="fourier", norm_eps=1e-6, mid_block_scale_factor=2 ** 0.5, norm_num_groups=None,
              down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D", "SkipDownBlock2D"),
              up_block_types=("SkipUpBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D"))
VAE = dict(block_out_channels=(2, 4), down_block_types=("DownEncoderBlock2D",) * 2,
           up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=2)


def unet_cond_inputs():
    g = torch.Generator().manual_seed(1)
    return dict(sample=torch.randn(2, 4, 16, 16, generator=g), timestep=torch.tensor(7),
                encoder_hidden_states=torch.randn(2, 3, 8, generator=g))


def checkpointed_classes(model) -> set[str]:
    model.enable_gradient_checkpointing()
    return {type(m).__name__ for m in model.modules() if hasattr(m, "gradient_checkpointing")}


@pytest.mark.parametrize("cls,config", [(UNet2DConditionModel, UNET_COND), (UNet2DModel, UNET_2D),
                                        (UNet2DModel, NCSNPP), (AutoencoderKL, VAE)],
                         ids=["unet-cond", "unet-2d", "ncsnpp", "vae"])
def test_the_same_modules_carry_the_checkpointing_switch_as_in_diffusers(cls, config):
    reference = getattr(diffusers, cls.__name__)(**config)
    assert checkpointed_classes(cls(**config)) == checkpointed_classes(reference)


def test_transformer_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = UNet2DConditionModel(**UNET_COND).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(**unet_cond_inputs()).sample.square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_vae_checkpointing_gives_the_same_gradients():
    """The VAE's Encoder / Decoder checkpoint their levels (the levels have no switch of their own)."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = AutoencoderKL(**VAE).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
            assert model.encoder.gradient_checkpointing and model.decoder.gradient_checkpointing
        sample = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        model(sample).sample.square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0] if grads[0][n] is not None)


class CountingProcessor(torch.nn.Module):
    """A processor written against Diffusers' helpers, with its own weight and an extra keyword."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor(0.5))
        self.calls, self.numbers = 0, set()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, number=None):
        batch, tokens, _ = hidden_states.shape
        mask = attn.prepare_attention_mask(attention_mask, tokens, batch)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = (attn.head_to_batch_dim(f(x)) for f, x in
                   ((attn.to_q, hidden_states), (attn.to_k, context), (attn.to_v, context)))
        out = attn.batch_to_head_dim(torch.bmm(attn.get_attention_scores(q, k, mask), v))
        self.calls += 1
        self.numbers.add(number)
        return attn.to_out[1](attn.to_out[0](out)) + self.bias


def test_cross_attention_kwargs_reach_custom_processors_as_in_diffusers():
    torch.manual_seed(0)
    model = UNet2DConditionModel(**UNET_COND).eval()
    reference = diffusers.UNet2DConditionModel(**UNET_COND).eval()
    reference.load_state_dict(model.state_dict())
    outputs, processors = [], []
    for m in (model, reference):
        processors.append(CountingProcessor())
        m.set_attn_processor(processors[-1])
        with torch.no_grad():  # "scale" is the LoRA scale: the processor does not take it
            outputs.append(m(**unet_cond_inputs(), cross_attention_kwargs={"number": 123, "scale": 1.0}).sample)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    assert processors[0].calls == processors[1].calls == 8
    assert processors[0].numbers == {123}


def test_processor_kwargs_end_with_the_call():
    model = UNet2DConditionModel(**UNET_COND).eval()
    processor = CountingProcessor()
    model.set_attn_processor(processor)
    with torch.no_grad():
        model(**unet_cond_inputs(), cross_attention_kwargs={"number": 7})
        model(**unet_cond_inputs())
    assert processor.numbers == {7, None}


@pytest.mark.parametrize("device_map,message", [(-1, "You can't pass device_map as a negative int"),
                                                ("foo", "When passing device_map as a string, the value needs to be "
                                                        "a device name")])
def test_bad_device_maps_are_refused_before_loading(tmp_path, device_map, message):
    UNet2DModel(**UNET_2D).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        UNet2DModel.from_pretrained(tmp_path, device_map=device_map)


@pytest.mark.parametrize("device_map", ["cpu", torch.device("cpu")])
def test_a_single_device_map_places_the_model(tmp_path, device_map):
    UNet2DModel(**UNET_2D).save_pretrained(tmp_path)
    assert UNet2DModel.from_pretrained(tmp_path, device_map=device_map).device == torch.device("cpu")


def test_variant_only_folder_says_which_file_is_missing_and_which_variant_is_there(tmp_path):
    UNet2DModel(**UNET_2D).save_pretrained(tmp_path, variant="fp16", safe_serialization=False)
    with pytest.raises(OSError, match="Error no file named diffusion_pytorch_model.bin found in directory") as err:
        UNet2DModel.from_pretrained(tmp_path)
    assert isinstance(err.value, WeightsNotFoundError) and "variant='fp16'" in str(err.value)


@pytest.mark.parametrize("cls", [UNet2DConditionModel, UNet2DModel, AutoencoderKL])
def test_no_deprecated_constructor_keywords(cls):
    """Diffusers' marker: a class whose constructor takes **kwargs lists the deprecated ones."""
    assert cls._deprecated_kwargs == []
    params = inspect.signature(cls.__init__).parameters.values()
    assert not any(p.kind is p.VAR_KEYWORD for p in params)
