"""Mixed-adapter batches: each row of one batched call equals that row computed alone."""

from __future__ import annotations

import pytest
import torch

from tests.lora.lora_files import TEXT_TARGETS, UNET_TARGETS, peft_layers, random_lora
from worker.lora import LoraError, adapter_rows, lora_scale

ROWS = [{"a": 1.0}, {}, {"b": 0.6, "c": 1.0}, {"a": 0.5, "b": 1.0, "c": -0.3}]


@pytest.fixture(scope="module")
def pipe(sd_folder):
    from worker.pipelines import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(sd_folder)
    pipe.base_unet = DiffusionPipeline.from_pretrained(sd_folder).unet  # an untouched copy
    for seed, name in enumerate("abc", start=1):
        state = {f"unet.{k}": v for k, v in peft_layers(random_lora(pipe.unet, UNET_TARGETS, 2 + seed, seed)).items()}
        text = peft_layers(random_lora(pipe.text_encoder, TEXT_TARGETS, 2, seed + 10))
        state.update({f"text_encoder.{k}": v for k, v in text.items()})
        pipe.load_lora_weights(state, adapter_name=name)
    return pipe


def unet_inputs(batch: int):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(batch, 4, 16, 16, generator=g), torch.tensor([10, 500, 999, 300][:batch]),
            torch.randn(batch, 77, 8, generator=g))


@torch.no_grad()
def run_unet(unet, x, t, text):
    return unet(x, t, encoder_hidden_states=text).sample


@torch.no_grad()
def test_mixed_rows_equal_each_row_alone(pipe):
    x, t, text = unet_inputs(4)
    with adapter_rows(ROWS):
        batched = run_unet(pipe.unet, x, t, text)
    for i, row in enumerate(ROWS):
        with adapter_rows([row]):
            alone = run_unet(pipe.unet, x[i : i + 1], t[i : i + 1], text[i : i + 1])
        assert (batched[i] - alone[0]).abs().max() <= 1e-5
    base = run_unet(pipe.base_unet, x, t, text)
    assert (batched[1] - base[1]).abs().max() <= 1e-5  # the no-adapter row is the base model
    assert min((batched[i] - base[i]).abs().max() for i in (0, 2, 3)) > 1e-2  # the others are not


@torch.no_grad()
def test_guidance_copies_tile_the_rows(pipe):
    x, t, text = unet_inputs(4)
    with adapter_rows(ROWS):
        once = run_unet(pipe.unet, x, t, text)
        twice = run_unet(pipe.unet, torch.cat([x] * 2), torch.cat([t] * 2), torch.cat([text] * 2))
    assert (twice[:4] - once).abs().max() <= 1e-5 and (twice[4:] - once).abs().max() <= 1e-5
    with adapter_rows(ROWS[:3]), pytest.raises(LoraError, match="not a multiple"):
        run_unet(pipe.unet, x, t, text)


@torch.no_grad()
def test_set_adapters_is_every_row_the_same_set(pipe):
    x, t, text = unet_inputs(2)
    pipe.set_adapters(["b", "c"], [0.6, 1.0])
    try:
        uniform = run_unet(pipe.unet, x, t, text)
        with lora_scale(0.5):
            halved = run_unet(pipe.unet, x, t, text)
    finally:
        pipe.set_adapters("a")
    with adapter_rows([ROWS[2]]):
        routed = run_unet(pipe.unet, x, t, text)
    with adapter_rows([{"b": 0.3, "c": 0.5}]):
        routed_half = run_unet(pipe.unet, x, t, text)
    assert (uniform - routed).abs().max() <= 1e-5 and (halved - routed_half).abs().max() <= 1e-5


@torch.no_grad()
def test_text_encoder_rows(pipe):
    ids = pipe.tokenizer(["a red cat", "a blue dog", "a photo"], padding="max_length", max_length=77,
                         return_tensors="pt").input_ids
    rows = [{"a": 1.0}, {}, {"c": 0.7}]
    with adapter_rows(rows):
        batched = pipe.text_encoder(ids)[0]
    for i, row in enumerate(rows):
        with adapter_rows([row]):
            alone = pipe.text_encoder(ids[i : i + 1])[0]
        assert (batched[i] - alone[0]).abs().max() <= 1e-5
    assert (batched[0] - batched[1]).abs().max() > 0


def test_routed_rows_refuse_fused_weights(pipe):
    x, t, text = unet_inputs(2)
    pipe.fuse_lora(components=["unet"])
    try:
        with adapter_rows([{"a": 1.0}, {}]), pytest.raises(LoraError, match="fused"):
            run_unet(pipe.unet, x, t, text)
    finally:
        pipe.unfuse_lora()
        pipe.set_adapters("a")


@torch.no_grad()
def test_unet_cross_attention_scale_scales_the_adapters(pipe):
    x, t, text = unet_inputs(2)
    with lora_scale(0.4):
        expected = run_unet(pipe.unet, x, t, text)
    got = pipe.unet(x, t, encoder_hidden_states=text, cross_attention_kwargs={"scale": 0.4}).sample
    full = run_unet(pipe.unet, x, t, text)
    assert torch.equal(got, expected) and (got - full).abs().max() > 1e-3


@torch.no_grad()
def test_a_replaced_adapter_is_not_served_from_stale_stacks(sd_folder):
    """Linear layers cache each routing's stacked slots; replacing an adapter under the same name
    (as the worker's LRU does after an eviction) must rebuild them."""
    from worker.pipelines import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(sd_folder)
    x, t, text = unet_inputs(2)
    results = []
    for seed in (1, 2):
        state = {f"unet.{k}": v for k, v in peft_layers(random_lora(pipe.unet, UNET_TARGETS, 4, seed)).items()}
        pipe.load_lora_weights(state, adapter_name="a")
        with adapter_rows([{"a": 1.0}, {}]):
            results.append(run_unet(pipe.unet, x, t, text))
        pipe.set_adapters("a")
        expected = run_unet(pipe.unet, x[:1], t[:1], text[:1])
        assert (results[-1][0] - expected[0]).abs().max() <= 1e-5
        pipe.delete_adapters("a")
    assert (results[0][0] - results[1][0]).abs().max() > 1e-3


@torch.no_grad()
def test_merged_slot_weights_equal_base_plus_deltas(pipe, monkeypatch):
    """Narrow float32 layers run routed rows on per-slot merged weights W + ΔW; the result is the
    unmerged path's (base output plus each row's delta), and each row's `set_adapters` run alone."""
    from worker.lora import layer

    x, t, text = unet_inputs(4)
    rows = layer.AdapterRows.of(ROWS)
    stacked = [(m, m._slot_stacks(rows)) for m in pipe.unet.modules() if isinstance(m, layer.LoraLinear) and m.lora]
    merging = [m for m, (down, _) in stacked if m._merges(len(rows.slots), down.shape[1], 256)]
    assert len(merging) >= len(stacked) // 2  # most of this UNet's adapted layers take the merged path
    with adapter_rows(ROWS), lora_scale(0.7):
        merged = run_unet(pipe.unet, x, t, text)
    monkeypatch.setattr(layer, "MERGE_MAX_ELEMENTS", 0)
    with adapter_rows(ROWS), lora_scale(0.7):
        unmerged = run_unet(pipe.unet, x, t, text)
    assert (merged - unmerged).abs().max() <= 1e-5
    pipe.set_adapters(["b", "c"], [0.6, 1.0])
    try:
        with lora_scale(0.7):
            alone = run_unet(pipe.unet, x[2:3], t[2:3], text[2:3])
    finally:
        pipe.set_adapters("a")
    assert (merged[2] - alone[0]).abs().max() <= 1e-5 and (merged[2] - merged[1]).abs().max() > 1e-3


@torch.no_grad()
def test_merged_slot_weights_follow_the_scale_and_the_base_weight(sd_folder):
    """The merged weights are cached per routing; a new scale or an in-place change of the base
    weight (a reloaded state dict) must rebuild them."""
    from worker.lora import layer
    from worker.pipelines import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(sd_folder)
    state = {f"unet.{k}": v for k, v in peft_layers(random_lora(pipe.unet, UNET_TARGETS, 4, 3)).items()}
    pipe.load_lora_weights(state, adapter_name="a")
    x, t, text = unet_inputs(2)
    rows = [{"a": 1.0}, {}]

    def routed(scale=1.0):
        with adapter_rows(rows), lora_scale(scale):
            return run_unet(pipe.unet, x, t, text)

    def expected(scale=1.0):
        pipe.set_adapters("a")
        with lora_scale(scale):
            return run_unet(pipe.unet, x[:1], t[:1], text[:1])[0]

    assert (routed()[0] - expected()).abs().max() <= 1e-5
    assert (routed(0.3)[0] - expected(0.3)).abs().max() <= 1e-5
    target = next(m for m in pipe.unet.modules() if isinstance(m, layer.LoraLinear) and m.lora)
    with torch.no_grad():
        target.weight.mul_(1.5)
    assert (routed(0.3)[0] - expected(0.3)).abs().max() <= 1e-5


def test_half_precision_layers_add_deltas_instead_of_merging():
    from worker.lora import layer

    linear = layer.LoraLinear.wrap(torch.nn.Linear(64, 64))
    assert linear._merges(slots=8, rank=8, tokens=64)  # a rank-8 delta is 25 % of a 64-wide layer
    assert not linear._merges(slots=8, rank=8, tokens=1)  # one token a row: the gather would cost a matmul
    assert not linear._merges(slots=8, rank=1, tokens=64)  # a rank-1 delta is 3 %: not worth the copies
    assert not layer.LoraLinear.wrap(torch.nn.Linear(64, 64).half())._merges(slots=8, rank=8, tokens=64)
    assert not layer.LoraLinear.wrap(torch.nn.Linear(2048, 2048))._merges(slots=8, rank=512, tokens=64)  # big


@torch.no_grad()
def test_the_same_mix_in_another_row_order_reuses_the_slot_tensors(pipe):
    """The batcher orders a call's rows by arrival, which changes from step to step; the per-slot
    tensors depend only on which adapter sets are present, so a new order rebuilds nothing."""
    from worker.lora import layer

    x, t, text = unet_inputs(4)
    target = next(m for m in pipe.unet.modules() if isinstance(m, layer.LoraLinear) and m.lora)
    with adapter_rows(ROWS):
        forward = run_unet(pipe.unet, x, t, text)
    cached = {key: id(value) for key, value in target._slot_cache.items()}
    order = [2, 0, 3, 1]
    with adapter_rows([ROWS[i] for i in order]):
        shuffled = run_unet(pipe.unet, x[order], t[order], text[order])
    assert {key: id(value) for key, value in target._slot_cache.items()} == cached
    assert (shuffled - forward[order]).abs().max() <= 1e-5


@torch.no_grad()
def test_slot_tensors_follow_the_model_to_another_dtype(sd_folder):
    """`.to()` moves the weights and adapters; per-slot tensors cached before it must not be used."""
    from worker.pipelines import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(sd_folder)
    state = {f"unet.{k}": v for k, v in peft_layers(random_lora(pipe.unet, UNET_TARGETS, 4, 5)).items()}
    pipe.load_lora_weights(state, adapter_name="a")
    x, t, text = unet_inputs(2)
    with adapter_rows([{"a": 1.0}, {}]):
        run_unet(pipe.unet, x, t, text)  # caches float32 stacks
        pipe.unet.double()
        routed = run_unet(pipe.unet, x.double(), t, text.double())
    pipe.set_adapters("a")
    alone = run_unet(pipe.unet, x[:1].double(), t[:1], text[:1].double())
    assert routed.dtype == torch.float64 and (routed[0] - alone[0]).abs().max() <= 1e-8
