"""Serving many LoRA adapters: N concurrent jobs each with its own adapter, batched (per-row LoRA
deltas in one call) vs the same jobs one at a time with the single-pipeline recipe between them
(load_lora_weights, fuse_lora, run, unfuse_lora, unload_lora_weights) vs N batched jobs with no
adapter; and, for reference, the N jobs without adapters one at a time (what batching alone gains
on this model and machine: the mixed batch cannot beat the plain one).

Runs the worker's code path (`worker.job_pipeline.run_params`: a pipeline view per job, the denoiser
behind the model's `StepBatcher`, adapters from the worker's LRU) in this process, on the bundled
kiln-shapes model (64×64 pixels, guidance on) with random rank-`--rank` adapters on the attention
and feed-forward layers of the UNet and the CLIP text encoder's attention.

    .venv/bin/python bench/bench_lora.py --jobs 8 --steps 10 --repeats 2 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from shared.catalog import Catalog, LoraSpec, ModelSpec  # noqa: E402
from shared.jobs.params import JobParams  # noqa: E402
from worker.job_pipeline import run_params  # noqa: E402
from worker.loaded_model import load_model  # noqa: E402
from worker.lora.files import write_lora  # noqa: E402
from worker.pipelines import DiffusionPipeline  # noqa: E402

MODEL = ROOT / "models" / "kiln-shapes"
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")
TEXT_TARGETS = ("q_proj", "v_proj")


def random_adapter(pipe, rank: int, seed: int) -> dict[str, torch.Tensor]:
    g, state = torch.Generator().manual_seed(seed), {}
    for component, targets in (("unet", UNET_TARGETS), ("text_encoder", TEXT_TARGETS)):
        for name, module in getattr(pipe, component).named_modules():
            if name.endswith(targets) and isinstance(module, torch.nn.Linear):
                state[f"{component}.{name}.lora_A.weight"] = torch.randn(rank, module.in_features, generator=g) * 0.05
                state[f"{component}.{name}.lora_B.weight"] = torch.randn(module.out_features, rank, generator=g) * 0.05
    return state


def job(k: int, steps: int, lora: str | None) -> dict:
    return {"model": "kiln-shapes", "task": "text-to-image", "prompt": "a small red circle at the top left",
            "negative_prompt": None, "width": 64, "height": 64, "steps": steps, "guidance_scale": 4.0,
            "scheduler": "dpmpp_2m", "seed": k, "num_images": 1, "strength": None, "output_format": "png",
            **({"loras": [{"name": lora, "scale": 1.0}]} if lora else {})}


def batched(pool, loaded, catalog, jobs) -> float:
    start = time.perf_counter()
    for future in [pool.submit(run_params, loaded, "sd", JobParams.from_stored(params), lambda *_: None, None, None,
                               catalog)
                   for params in jobs]:
        future.result()
    return time.perf_counter() - start


def one_at_a_time(pipe, catalog, jobs) -> float:
    """Diffusers' single-adapter recipe per job: load, fuse, generate, unfuse, unload (jobs without
    an adapter: generate only)."""
    start = time.perf_counter()
    for params in jobs:
        spec = catalog.get_lora(params["loras"][0]["name"]) if params.get("loras") else None
        if spec:
            pipe.load_lora_weights(spec.source, adapter_name=spec.name)
            pipe.fuse_lora()
        pipe(params["prompt"], height=64, width=64, num_inference_steps=params["steps"], guidance_scale=4.0,
             generator=torch.Generator().manual_seed(params["seed"]))
        if spec:
            pipe.unfuse_lora()
            pipe.unload_lora_weights()
    return time.perf_counter() - start


def unet_call_costs(pipe, jobs: int, repeats: int = 15) -> dict[str, float]:
    """Median ms of one UNet call at 2·jobs rows (jobs × CFG) with no adapter, with one adapter per
    job on merged slot weights, and the same on the delta path (base output + per-row deltas)."""
    from worker.lora import adapter_rows, layer

    config = pipe.unet.config
    rows = 2 * jobs
    x = torch.randn(rows, config.in_channels, config.sample_size, config.sample_size)
    t, text = torch.full((rows,), 500), torch.randn(rows, 77, config.cross_attention_dim)
    routing = [{f"style-{k}": 1.0} for k in range(jobs)]

    def timed(routed: bool) -> float:
        def call():
            if routed:
                with adapter_rows(routing):
                    pipe.unet(x, t, encoder_hidden_states=text)
            else:
                pipe.unet(x, t, encoder_hidden_states=text)
        for _ in range(3):
            call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return 1000 * statistics.median(times)

    limit = layer.MERGE_MAX_ELEMENTS
    with torch.inference_mode():
        costs = {"base": timed(False), "merged": timed(True)}
        layer.MERGE_MAX_ELEMENTS = 0
        try:
            costs["delta"] = timed(True)
        finally:
            layer.MERGE_MAX_ELEMENTS = limit
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from worker.job_scheduler import build_scheduler

    served = DiffusionPipeline.from_pretrained(MODEL)
    alone = DiffusionPipeline.from_pretrained(MODEL)
    alone.scheduler = build_scheduler("dpmpp_2m", alone.scheduler)
    folder = Path(tempfile.mkdtemp(prefix="kiln-bench-lora-"))
    loras = [LoraSpec(name=f"style-{k}", base="sd", source=str(write_lora(random_adapter(served, args.rank, k),
                                                                            folder / f"style-{k}").parent))
             for k in range(args.jobs)]
    catalog = Catalog([ModelSpec(name="kiln-shapes", source=str(MODEL), family="sd")], loras)
    loaded = load_model("kiln-shapes", served, max_rows=64)
    pool = ThreadPoolExecutor(args.jobs)
    with_lora = [job(k, args.steps, f"style-{k}") for k in range(args.jobs)]
    without = [job(k, args.steps, None) for k in range(args.jobs)]
    first = batched(pool, loaded, catalog, [job(k, 2, f"style-{k}") for k in range(args.jobs)])  # loads all
    batched(pool, loaded, catalog, without[:2])
    results: dict[str, list[float]] = {"mixed": [], "sequential": [], "plain": [], "plain_sequential": []}
    for _ in range(args.repeats):  # alternate so drift in machine load hits every variant
        results["mixed"].append(batched(pool, loaded, catalog, with_lora))
        results["sequential"].append(one_at_a_time(alone, catalog, with_lora))
        results["plain"].append(batched(pool, loaded, catalog, without))
        results["plain_sequential"].append(one_at_a_time(alone, catalog, without))
    print(f"jobs={args.jobs} steps={args.steps} rank={args.rank} threads={torch.get_num_threads()} "
          f"(first mixed round incl. loading {args.jobs} adapters at 2 steps: {first:.2f} s)\n")
    print("| variant | seconds (median) | images/s |")
    print("|---|---|---|")
    labels = {"mixed": f"{args.jobs} concurrent jobs, a different adapter each, batched",
              "sequential": "one at a time: load, fuse, run, unfuse, unload",
              "plain": f"{args.jobs} concurrent jobs, no adapter, batched",
              "plain_sequential": "reference: no adapter, one at a time"}
    for key, label in labels.items():
        seconds = statistics.median(results[key])
        print(f"| {label} | {seconds:.2f} | {args.jobs / seconds:.2f} |", flush=True)
    median = {key: statistics.median(values) for key, values in results.items()}
    print(f"\nmixed vs one at a time: {median['sequential'] / median['mixed']:.2f}× faster (goal ≥ 2×); "
          f"mixed / no adapter batched: {median['mixed'] / median['plain']:.2f}× (goal ≤ 1.25×); "
          f"batching alone (no adapter, one at a time / batched): {median['plain_sequential'] / median['plain']:.2f}×")
    for name in [spec.name for spec in loras]:  # the served pipeline holds the adapters (LRU)
        assert name in served.get_list_adapters().get("unet", []), name
    costs = unet_call_costs(served, args.jobs)
    print(f"\nOne UNet call, {2 * args.jobs} rows ({args.jobs} jobs × CFG), median ms: no adapter "
          f"{costs['base']:.1f}; an adapter per job on merged slot weights {costs['merged']:.1f} "
          f"({costs['merged'] / costs['base']:.2f}×); on the delta path {costs['delta']:.1f} "
          f"({costs['delta'] / costs['base']:.2f}×)")
    loaded.close()


if __name__ == "__main__":
    main()
