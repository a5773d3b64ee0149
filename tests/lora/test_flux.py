"""FLUX LoRA (transformer + CLIP text encoder, Diffusers layout) against diffusers + peft, and
mixed-adapter rows through Kiln's FluxTransformer2DModel."""

from __future__ import annotations

import pytest
import torch

from tests.lora.lora_files import TEXT_TARGETS, peft_layers, random_lora
from tests.pipelines.tiny import MAX_PIXEL_DIFF, max_diff, seeded
from worker.lora import adapter_rows

FLUX_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "to_add_out", "proj_mlp", "proj_out", "ff.net.2",
                "ff_context.net.2")
CALL = dict(prompt="a red cat", num_inference_steps=2, output_type="np", height=32, width=32, max_sequence_length=16)


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    from tests.pipelines.tiny_flow import save_tiny_flux

    return save_tiny_flux(tmp_path_factory.mktemp("flux"))


def save_flux_lora(folder, ref, seed):
    layers = {"transformer_lora_layers": peft_layers(random_lora(ref.transformer, FLUX_TARGETS, 2, seed, std=0.3)),
              "text_encoder_lora_layers": peft_layers(random_lora(ref.text_encoder, TEXT_TARGETS, 2, seed + 1))}
    type(ref).save_lora_weights(folder, **layers)
    return folder


def images(pipe, **kwargs):
    return pipe(generator=seeded(0), **{**CALL, **kwargs}).images


def test_flux_lora_matches_diffusers(flux_folder, tmp_path):
    import diffusers

    from worker.pipelines import DiffusionPipeline

    ref, pipe = diffusers.FluxPipeline.from_pretrained(flux_folder), DiffusionPipeline.from_pretrained(flux_folder)
    base = images(pipe)
    files = {name: save_flux_lora(tmp_path / name, ref, seed=10 * i + 1) for i, name in enumerate("ab")}
    for name, folder in files.items():
        for p in (ref, pipe):
            p.load_lora_weights(folder, adapter_name=name)
    assert pipe.get_list_adapters() == {"transformer": ["a", "b"], "text_encoder": ["a", "b"]}
    for p in (ref, pipe):
        p.set_adapters(["a", "b"], [0.8, 0.5])
    expected, got = images(ref, joint_attention_kwargs={"scale": 0.7}), images(pipe, joint_attention_kwargs={"scale": 0.7})
    assert max_diff(got, expected) < MAX_PIXEL_DIFF and max_diff(got, base) > 20 * MAX_PIXEL_DIFF


@torch.no_grad()
def test_flux_transformer_rows(flux_folder):
    from worker.pipelines import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(flux_folder)
    model = pipe.transformer
    for seed, name in enumerate("ab"):
        pipe.load_lora_weights({f"transformer.{k}": v for k, v in
                                peft_layers(random_lora(model, FLUX_TARGETS, 2, seed, std=0.3)).items()}, adapter_name=name)
    g, cfg = torch.Generator().manual_seed(0), model.config
    B, S, T = 3, 16, 8
    inputs = dict(hidden_states=torch.randn(B, S, cfg.in_channels, generator=g),
                  encoder_hidden_states=torch.randn(B, T, cfg.joint_attention_dim, generator=g),
                  pooled_projections=torch.randn(B, cfg.pooled_projection_dim, generator=g),
                  timestep=torch.tensor([0.2, 0.5, 0.9]), guidance=torch.full((B,), 3.5),
                  txt_ids=torch.zeros(T, 3), img_ids=torch.zeros(S, 3), return_dict=False)
    rows = [{"a": 1.0}, {}, {"a": 0.3, "b": 0.9}]
    with adapter_rows(rows):
        batched = model(**inputs)[0]
    for i, row in enumerate(rows):
        one = {k: v[i : i + 1] if k not in ("txt_ids", "img_ids", "return_dict") else v for k, v in inputs.items()}
        with adapter_rows([row]):
            alone = model(**one)[0]
        assert (batched[i] - alone[0]).abs().max() <= 1e-5


# ---------------------------------------------------------------------- kohya (BFL names) FLUX files
KOHYA_DOUBLE = {"img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"), "img_attn_proj": ("attn.to_out.0",),
                "img_mlp_0": ("ff.net.0.proj",), "img_mlp_2": ("ff.net.2",),
                "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
                "txt_attn_proj": ("attn.to_add_out",), "txt_mlp_2": ("ff_context.net.2",)}
KOHYA_SINGLE = {"linear2": ("proj_out",), "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}


def kohya_flux_state(model, seed, single=("linear2",), rank=2, alpha=1.0):
    """sd-scripts FLUX LoRA tensors: `lora_unet_{double,single}_blocks_<i>_<BFL layer>` with fused qkv."""
    g, state = torch.Generator().manual_seed(seed), {}
    blocks = [("double_blocks", "transformer_blocks", len(model.transformer_blocks), KOHYA_DOUBLE),
              ("single_blocks", "single_transformer_blocks", len(model.single_transformer_blocks),
               {k: KOHYA_SINGLE[k] for k in single})]
    for bfl, ours, count, layers in blocks:
        for i in range(count):
            for layer, parts in layers.items():
                modules = [model.get_submodule(f"{ours}.{i}.{p}") for p in parts]
                key = f"lora_unet_{bfl}_{i}_{layer}"
                state[f"{key}.lora_down.weight"] = torch.randn(rank, modules[0].in_features, generator=g) * 0.3
                state[f"{key}.lora_up.weight"] = torch.randn(sum(m.out_features for m in modules), rank, generator=g) * 0.3
                state[f"{key}.alpha"] = torch.tensor(alpha)
    return state


def test_kohya_flux_matches_diffusers(flux_folder, tmp_path):
    import diffusers
    from safetensors.torch import save_file

    from worker.pipelines import DiffusionPipeline

    ref, pipe = diffusers.FluxPipeline.from_pretrained(flux_folder), DiffusionPipeline.from_pretrained(flux_folder)
    base = images(pipe)
    # diffusers 0.42 splits single_blocks linear1 at FLUX.1's fixed widths (3072 ...): tiny models take linear2 only.
    save_file(kohya_flux_state(pipe.transformer, seed=3, alpha=1.5), str(tmp_path / "k.safetensors"))
    for p in (ref, pipe):
        p.load_lora_weights(tmp_path / "k.safetensors", adapter_name="k")
    expected, got = images(ref), images(pipe)
    assert max_diff(got, expected) < MAX_PIXEL_DIFF and max_diff(got, base) > 20 * MAX_PIXEL_DIFF


@torch.no_grad()
def test_fused_linear1_splits_into_q_k_v_and_mlp(flux_folder):
    from worker.pipelines import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(flux_folder)
    state = kohya_flux_state(pipe.transformer, seed=4, single=("linear1",), alpha=1.0)
    pipe.load_lora_weights(state, adapter_name="fused")
    q = pipe.transformer.single_transformer_blocks[0].attn.to_q
    mlp = pipe.transformer.single_transformer_blocks[0].proj_mlp
    up = state["lora_unet_single_blocks_0_linear1.lora_up.weight"]
    assert torch.equal(q.lora["fused"].up, up[: q.out_features])
    assert torch.equal(mlp.lora["fused"].up, up[3 * q.out_features :])
    assert torch.equal(mlp.lora["fused"].down, state["lora_unet_single_blocks_0_linear1.lora_down.weight"])
    assert q.lora["fused"].scaling == 0.5  # α 1 / rank 2


def test_flux_jobs_with_different_adapters_share_calls(flux_folder):
    """Through the worker's path (run_params, BatchedTransformer, adapter LRU): each job equals itself alone."""
    import threading

    import numpy as np

    from shared.catalog import Catalog, LoraSpec, ModelSpec
    from shared.jobs.params import JobParams
    from worker.job_pipeline import run_params
    from worker.loaded_model import load_model
    from worker.lora.files import write_lora
    from worker.pipelines import DiffusionPipeline
    from worker.job_scheduler import build_scheduler

    served = DiffusionPipeline.from_pretrained(flux_folder)
    folder = flux_folder.parent / "flux-loras"
    loras = [LoraSpec(name=name, base="flux", source=str(write_lora(
        {f"transformer.{k}": v for k, v in peft_layers(random_lora(served.transformer, FLUX_TARGETS, 2, seed,
                                                                   std=0.3)).items()}, folder / name).parent))
             for seed, name in enumerate(("x", "y"))]
    catalog = Catalog([ModelSpec(name="flux", source=str(flux_folder), family="flux", guidance_distilled=True)], loras)
    loaded = load_model("flux", served, max_rows=8)
    base = {"model": "flux", "task": "text-to-image", "prompt": "a cat", "negative_prompt": None, "steps": 2,
            "scheduler": "flow_euler",
            "guidance_scale": 3.5, "num_images": 1, "width": 32, "height": 32, "true_cfg_scale": 1.0,
            "max_sequence_length": 16}
    jobs = [{**base, "seed": 1, "loras": [{"name": "x", "scale": 1.0}]}, {**base, "seed": 2},
            {**base, "seed": 3, "loras": [{"name": "x", "scale": 0.4}, {"name": "y", "scale": 0.8}]}]
    results, barrier = {}, threading.Barrier(len(jobs))

    def run(i):
        barrier.wait()
        results[i] = run_params(loaded, "flux", JobParams.from_stored(jobs[i]), lambda *_: None, catalog=catalog)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert loaded.batcher.stats.rows > loaded.batcher.stats.calls  # the jobs shared calls
    alone = DiffusionPipeline.from_pretrained(flux_folder)
    alone.scheduler = build_scheduler("flow_euler", alone.scheduler)
    for spec in loras:
        alone.load_lora_weights(spec.source, adapter_name=spec.name)
    for i, job in enumerate(jobs):
        chosen = job.get("loras", [])
        alone.set_adapters([c["name"] for c in chosen], [c["scale"] for c in chosen])
        expected = alone("a cat", num_inference_steps=2, guidance_scale=3.5, height=32, width=32,
                         max_sequence_length=16, generator=torch.Generator().manual_seed(job["seed"])).images[0]
        assert np.abs(np.asarray(results[i], int) - np.asarray(expected, int)).max() <= 1
    alone.set_adapters([])
    plain = alone("a cat", num_inference_steps=2, guidance_scale=3.5, height=32, width=32, max_sequence_length=16,
                  generator=torch.Generator().manual_seed(1)).images[0]
    assert np.abs(np.asarray(results[0], int) - np.asarray(plain, int)).max() > 10  # adapter x did something
    loaded.close()
