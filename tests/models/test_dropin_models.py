"""Kiln's models as drop-ins for Diffusers' (issue 18): the `ModelMixin` contract Diffusers code relies on.

Numbers are checked against diffusers (the oracle) in the same process on the same weights; the
API checks pin what Diffusers code calls: loading/saving options, dict-like outputs, the errors it
catches, attention processors, gradient checkpointing.
"""

from __future__ import annotations

import pickle
import warnings

import diffusers
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0 as DiffusersAttnProcessor2_0

from worker.models import AutoencoderKL, UNet2DConditionModel, UNet2DModel
from worker.models.attention import AttnProcessor, AttnProcessor2_0
from worker.models.outputs import UNetOutput
from worker.models.weights import WeightsNotFoundError, parse_shard_size

UNET_COND = dict(block_out_channels=(4, 8), norm_num_groups=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8, attention_head_dim=2,
                 layers_per_block=1, sample_size=16)
SDXL_UNET = dict(block_out_channels=(4, 8), layers_per_block=2, sample_size=16, norm_num_groups=1,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=56,
                 cross_attention_dim=16)
UNET_2D = dict(block_out_channels=(4, 8), norm_num_groups=2, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
               up_block_types=("AttnUpBlock2D", "UpBlock2D"), attention_head_dim=3, layers_per_block=2, sample_size=16)
FOURIER_UNET_2D = dict(UNET_2D, time_embedding_type="fourier", class_embed_type="timestep")
VAE = dict(block_out_channels=(2, 4), down_block_types=("DownEncoderBlock2D",) * 2,
           up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=2)

SEEDED = [("UNet2DConditionModel", UNET_COND), ("UNet2DConditionModel", SDXL_UNET), ("UNet2DModel", UNET_2D),
          ("UNet2DModel", FOURIER_UNET_2D), ("AutoencoderKL", VAE)]
KILN = {"UNet2DConditionModel": UNet2DConditionModel, "UNet2DModel": UNet2DModel, "AutoencoderKL": AutoencoderKL}


def seeded(cls, config, seed=0):
    torch.manual_seed(seed)
    return cls(**config).eval()


def unet_cond_inputs(batch=2):
    g = torch.Generator().manual_seed(1)
    return dict(sample=torch.randn(batch, 4, 16, 16, generator=g), timestep=torch.tensor(7),
                encoder_hidden_states=torch.randn(batch, 3, 8, generator=g))


def forward(model, **kwargs):
    with torch.no_grad():
        return model(**unet_cond_inputs(), **kwargs).sample


@pytest.mark.parametrize("name,config", SEEDED, ids=["sd", "sdxl", "unet2d", "unet2d-fourier", "vae"])
def test_seed_gives_the_same_initial_weights_as_diffusers(name, config):
    """Submodules are created in Diffusers' order, so a model built from a config under one seed
    is the same model (every tensor, bit for bit)."""
    ref = seeded(getattr(diffusers, name), config).state_dict()
    got = seeded(KILN[name], config).state_dict()
    assert list(got) == list(ref) or sorted(got) == sorted(ref)
    differing = [k for k in ref if not torch.equal(ref[k], got[k])]
    assert differing == []


def test_outputs_are_dict_like():
    out = forward(seeded(UNet2DConditionModel, UNET_COND), return_dict=True)
    full = seeded(UNet2DConditionModel, UNET_COND)(**unet_cond_inputs())
    assert isinstance(full, dict) and list(full.keys()) == ["sample"]
    assert full["sample"] is full[0] is full.sample and full.to_tuple() == (full.sample,)
    assert torch.equal(out, full.sample.detach())
    with pytest.raises(TypeError):
        full.pop("sample")
    copy = pickle.loads(pickle.dumps(UNetOutput(sample=torch.ones(2))))
    assert torch.equal(copy["sample"], torch.ones(2))


def test_save_load_options(tmp_path):
    """safe_serialization=False writes .bin; max_shard_size shards with an index; variant names
    files; use_safetensors=True refuses pickles; output_loading_info returns empty lists."""
    model = seeded(UNet2DConditionModel, UNET_COND)
    model.save_pretrained(tmp_path / "bin", safe_serialization=False)
    assert (tmp_path / "bin" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(OSError):
        UNet2DConditionModel.from_pretrained(tmp_path / "bin", use_safetensors=True)
    loaded, info = UNet2DConditionModel.from_pretrained(tmp_path / "bin", output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    assert torch.equal(forward(model), forward(loaded))

    model.save_pretrained(tmp_path / "sharded", max_shard_size="8KB", variant="fp16")
    folder = tmp_path / "sharded"
    assert (folder / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
    assert len(list(folder.glob("diffusion_pytorch_model.fp16-*-of-*.safetensors"))) > 1
    with pytest.raises(OSError):  # only variant files: loading without the variant fails, as in Diffusers
        UNet2DConditionModel.from_pretrained(folder)
    loaded = UNet2DConditionModel.from_pretrained(folder, variant="fp16", low_cpu_mem_usage=False, cache_dir=None)
    assert torch.equal(forward(model), forward(loaded))


def test_resave_with_fewer_shards_removes_stale_ones(tmp_path):
    model = seeded(UNet2DConditionModel, UNET_COND)
    model.save_pretrained(tmp_path, max_shard_size="8KB")
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("diffusion_pytorch_model*")) == ["diffusion_pytorch_model.safetensors"]


def test_missing_weights_is_an_oserror_and_a_kiln_load_error(tmp_path):
    seeded(UNet2DModel, UNET_2D).save_config(tmp_path)
    with pytest.raises(WeightsNotFoundError) as caught:
        UNet2DModel.from_pretrained(tmp_path)
    assert isinstance(caught.value, OSError) and isinstance(caught.value, ValueError)


def test_from_pretrained_config_overrides_and_unknown_arguments(tmp_path):
    seeded(UNet2DModel, UNET_2D).save_pretrained(tmp_path)
    assert UNet2DModel.from_pretrained(tmp_path, center_input_sample=True).config.center_input_sample is True
    with pytest.raises(TypeError, match="not_an_option"):
        UNet2DModel.from_pretrained(tmp_path, not_an_option=1)


def test_torch_dtype_keeps_fp32_modules(tmp_path, monkeypatch):
    seeded(UNet2DModel, UNET_2D).save_pretrained(tmp_path)
    monkeypatch.setattr(UNet2DModel, "_keep_in_fp32_modules", ["conv_out"])
    model = UNet2DModel.from_pretrained(tmp_path, torch_dtype=torch.float16)
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    assert dtypes["conv_out.weight"] == torch.float32 and dtypes["conv_in.weight"] == torch.float16


@pytest.mark.parametrize("size,expected", [(1000, 1000), ("10GB", 10**10), ("5MiB", 5 * 2**20), ("200kb", 200_000)])
def test_parse_shard_size(size, expected):
    assert parse_shard_size(size) == expected


def test_parse_shard_size_rejects_nonsense():
    with pytest.raises(ValueError, match="max_shard_size"):
        parse_shard_size("lots")


def test_register_to_config_and_deprecated_attribute_reads():
    model = seeded(UNet2DModel, UNET_2D)
    model.register_to_config(extra_key=3)
    assert model.config.extra_key == 3 and model.config.in_channels == 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert model.in_channels == 3
    assert any(issubclass(w.category, FutureWarning) for w in caught)
    with pytest.raises(AttributeError):
        model.not_a_key


@pytest.mark.parametrize("processor", [AttnProcessor, AttnProcessor2_0])
def test_attention_processors_match_diffusers(processor):
    ref, got = seeded(diffusers.UNet2DConditionModel, UNET_COND), seeded(UNet2DConditionModel, UNET_COND)
    assert sorted(got.attn_processors) == sorted(ref.attn_processors)
    got.set_attn_processor(processor())
    assert all(isinstance(p, processor) for p in got.attn_processors.values())
    assert (forward(ref) - forward(got)).abs().max() < 1e-5


def test_set_attn_processor_dict_must_name_every_layer():
    model = seeded(UNet2DConditionModel, UNET_COND)
    keys = list(model.attn_processors)
    model.set_attn_processor({k: AttnProcessor() for k in keys})
    with pytest.raises(ValueError, match="all"):
        model.set_attn_processor({keys[0]: AttnProcessor()})


@pytest.mark.parametrize("config", [UNET_COND, VAE], ids=["unet", "vae"])
def test_fused_qkv_projections_give_the_same_output(config):
    cls = UNet2DConditionModel if config is UNET_COND else AutoencoderKL
    model = seeded(cls, config)
    x = unet_cond_inputs() if cls is UNet2DConditionModel else {"sample": torch.randn(2, 3, 16, 16)}
    with torch.no_grad():
        before = model(**x).sample
        model.fuse_qkv_projections()
        assert any(hasattr(m, "to_qkv") for m in model.modules())
        fused = model(**x).sample
        model.unfuse_qkv_projections()
        assert not any(hasattr(m, "to_qkv") or hasattr(m, "to_kv") for m in model.modules())
        after = model(**x).sample
    assert (before - fused).abs().max() < 1e-5 and torch.equal(before, after)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = seeded(UNet2DConditionModel, UNET_COND).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
            assert model.is_gradient_checkpointing
        model(**unet_cond_inputs()).sample.square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert all((grads[0][n] - grads[1][n]).abs().max() < 1e-6 for n in grads[0])
    blocks = {type(m).__name__ for m in model.modules() if getattr(m, "gradient_checkpointing", False)}
    assert {"CrossAttnDownBlock2D", "DownBlock2D", "UNetMidBlock2DCrossAttn", "UpBlock2D", "CrossAttnUpBlock2D"} <= blocks
    model.disable_gradient_checkpointing()
    assert not model.is_gradient_checkpointing


def test_freeu_matches_diffusers_and_switches_off():
    ref, got = seeded(diffusers.UNet2DConditionModel, UNET_COND), seeded(UNet2DConditionModel, UNET_COND)
    plain = forward(got)
    for model in (ref, got):
        model.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
    assert (forward(ref) - forward(got)).abs().max() < 1e-5
    assert (forward(got) - plain).abs().max() > 1e-3
    got.disable_freeu()
    assert torch.equal(forward(got), plain)


def test_cross_attention_scale_is_accepted_without_adapters():
    model = seeded(UNet2DConditionModel, UNET_COND)
    assert torch.equal(forward(model), forward(model, cross_attention_kwargs={"scale": 0.3}))
    # keys that no processor takes are dropped, as Diffusers drops them
    assert torch.equal(forward(model), forward(model, cross_attention_kwargs={"ip_adapter_masks": None}))


NCSNPP = dict(block_out_channels=(32, 64, 64, 64), in_channels=3, out_channels=3, layers_per_block=1, sample_size=16,
              time_embedding_type="fourier", norm_eps=1e-6, mid_block_scale_factor=2 ** 0.5, norm_num_groups=None,
              down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D", "SkipDownBlock2D"),
              up_block_types=("SkipUpBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D"))
RESNET_SAMPLED = dict(block_out_channels=(8, 16), norm_num_groups=4, layers_per_block=1, sample_size=16,
                      down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
                      up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D"), attention_head_dim=4,
                      downsample_type="resnet", upsample_type="resnet")


@pytest.mark.parametrize("config,sigmas", [(NCSNPP, [0.5, 3.0]), (RESNET_SAMPLED, [10, 500])],
                         ids=["ncsnpp", "resnet-sampling"])
def test_more_unet2d_levels_match_diffusers(config, sigmas):
    """NCSN++ levels (FIR resampling, input/output image skips, groups min(C/4, 32)) and
    resnet-resampled levels: same seeded init and same outputs as diffusers."""
    ref, got = seeded(diffusers.UNet2DModel, config), seeded(UNet2DModel, config)
    assert all(torch.equal(v, got.state_dict()[k]) for k, v in ref.state_dict().items())
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)), torch.tensor(sigmas)
    with torch.no_grad():
        assert (ref(x, t).sample - got(x, t).sample).abs().max() < 1e-5


def test_conditional_unet_refuses_image_carrying_levels():
    with pytest.raises(ValueError, match="unknown down block type 'SkipDownBlock2D'"):
        UNet2DConditionModel(**{**UNET_COND, "down_block_types": ("SkipDownBlock2D", "DownBlock2D")})


def test_memory_attention_switches_are_accepted_and_change_nothing():
    model = seeded(UNet2DConditionModel, UNET_COND)
    plain = forward(model)
    model.enable_xformers_memory_efficient_attention()
    model.set_attention_slice("auto")
    assert torch.equal(forward(model), plain)
    model.disable_xformers_memory_efficient_attention()


class CountingProcessor:
    """A processor written against Diffusers' Attention helpers (as community processors are)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        self.calls += 1
        residual, spatial = hidden_states, hidden_states.ndim == 4
        if spatial:
            B, C, H, W = hidden_states.shape
            hidden_states = hidden_states.view(B, C, H * W).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        mask = attn.prepare_attention_mask(attention_mask, context.shape[1], hidden_states.shape[0])
        q, k, v = (attn.head_to_batch_dim(t) for t in (attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)))
        out = attn.batch_to_head_dim(torch.bmm(attn.get_attention_scores(q, k, mask), v))
        out = attn.to_out[1](attn.to_out[0](out))
        if spatial:
            out = out.transpose(1, 2).reshape(B, C, H, W)
        out = out + residual if attn.residual_connection else out
        return out / attn.rescale_output_factor


@pytest.mark.parametrize("processor", [DiffusersAttnProcessor2_0, CountingProcessor])
@pytest.mark.parametrize("config", [UNET_COND, VAE], ids=["unet", "vae"])
def test_processors_written_for_diffusers_run_on_kiln_layers(processor, config):
    """Diffusers' own processor classes, and processors using its Attention helpers, plug into Kiln's
    layers (cross-attention with a text mask, and the VAE's spatial attention) with the same result."""
    cls = UNet2DConditionModel if config is UNET_COND else AutoencoderKL
    model = seeded(cls, config)
    x = dict(unet_cond_inputs(), encoder_attention_mask=torch.tensor([[1, 1, 0], [1, 1, 1]])) \
        if cls is UNet2DConditionModel else {"sample": torch.randn(2, 3, 16, 16)}
    with torch.no_grad():
        ref = model(**x).sample
        proc = processor()
        model.set_attn_processor(proc)
        got = model(**x).sample
    assert (ref - got).abs().max() < 1e-5
    assert getattr(proc, "calls", 1) > 0


def test_encoder_attention_mask_matches_diffusers():
    ref, got = seeded(diffusers.UNet2DConditionModel, UNET_COND), seeded(UNet2DConditionModel, UNET_COND)
    mask = torch.tensor([[1, 0, 1], [1, 1, 1]])
    assert (forward(ref, encoder_attention_mask=mask) - forward(got, encoder_attention_mask=mask)).abs().max() < 1e-5
