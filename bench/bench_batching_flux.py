"""Throughput of the step batcher on FLUX-architecture jobs: N concurrent jobs batched vs one at a time.

The worker's own path (`worker.job_pipeline.run_params`: a pipeline view per job, its transformer
behind the model's `StepBatcher` as a `BatchedTransformer`, its VAE decode behind the decode
batcher, PIL images out), in this process, without Celery or Redis; one at a time is the same
pipeline call with no batcher. The
model is Kiln's `FluxPipeline` with Kiln's `FluxTransformer2DModel` at tiny widths (random
weights, guidance-distilled like FLUX.1-dev), a small CLIP, a small T5 and a 16-channel VAE.

    .venv/bin/python bench/bench_batching_flux.py --jobs 1 2 4 8 --steps 8 --threads 1
    .venv/bin/python bench/bench_batching_flux.py --jobs 8 --steps 8 --threads 1 --lengths 64 128
    .venv/bin/python bench/bench_batching_flux.py --model models/kiln-shapes-flux --jobs 1 2 4 8 --lengths 32

`--model FOLDER` runs a trained FLUX pipeline instead (the bundled `kiln-shapes-flux`: its
default steps and T5 length, held-out kiln-shapes prompts, no guidance).

`--lengths` gives the jobs T5 prompt lengths in turn (`max_sequence_length`): with two lengths
the batcher groups by length (two calls a step); a second table runs the same jobs all at the
longest length — what padding to one length with a key mask would cost (one call a step, every
row as long as the longest).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shared.jobs.params import JobParams  # noqa: E402
from worker.job_pipeline import call_kwargs, pipeline_for_task, run_params  # noqa: E402
from worker.loaded_model import load_model  # noqa: E402


def flux_pipeline(width: int, heads: int, size: int):
    """A FLUX.1-dev-architecture pipeline of Kiln classes: `heads` × 32-dim heads, 2 + 4 blocks."""
    from tests.pipelines.tiny import tiny_text_encoder, tiny_tokenizer
    from tests.pipelines.tiny_flow import tiny_t5_encoder, tiny_t5_tokenizer
    from worker.models import AutoencoderKL, FluxTransformer2DModel
    from worker.pipelines import FluxPipeline
    from worker.schedulers import FlowMatchEulerDiscreteScheduler

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=32, num_attention_heads=heads,
        joint_attention_dim=32, pooled_projection_dim=width, guidance_embeds=True, axes_dims_rope=(8, 12, 12),
    ).eval()
    vae = AutoencoderKL(block_out_channels=(8, 16), latent_channels=16, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        sample_size=size, shift_factor=0.1159, scaling_factor=0.3611,
                        use_quant_conv=False, use_post_quant_conv=False).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=tiny_text_encoder(hidden=width),
                        tokenizer=tiny_tokenizer(), text_encoder_2=tiny_t5_encoder(),
                        tokenizer_2=tiny_t5_tokenizer(), transformer=transformer)


def prompt_for(k: int, args) -> str:
    if not args.model:
        return f"a red cat {k}"
    from kiln_shapes import data

    held_out = data.split_combinations()[1]
    return data.caption(data.Scene(*held_out[k % len(held_out)]))


def job_params(k: int, args, length: int) -> JobParams:
    """Job k as the worker stores it: flow-Euler from the model's scheduler config, one image."""
    return JobParams.from_stored({
        "version": 2, "model": "flux-bench", "task": "text-to-image", "prompt": prompt_for(k, args),
        "width": args.size, "height": args.size, "steps": args.steps, "guidance_scale": 3.5,
        "scheduler": "flow_euler", "seed": k,
        "family_fields": {"family": "flux", "true_cfg_scale": 1.0, "max_sequence_length": length}})


def run_alone(loaded, k: int, args, length: int):
    """The worker's pipeline call for job k, without the batchers (nothing to share with)."""
    params = job_params(k, args, length)
    pipe = pipeline_for_task(loaded, "flux", params.task, params.scheduler)
    with torch.inference_mode():
        return pipe(**call_kwargs(params, "flux"), generator=torch.Generator("cpu").manual_seed(params.seed)).images


def sequential(loaded, n: int, args, lengths: list[int]) -> float:
    start = time.perf_counter()
    for k in range(n):
        run_alone(loaded, k, args, lengths[k % len(lengths)])
    return time.perf_counter() - start


def batched(pool: ThreadPoolExecutor, loaded, n: int, args, lengths: list[int]) -> float:
    """n jobs submitted together through the worker's `run_params`: denoiser steps through the step
    batcher, VAE decodes through the decode batcher, each job leaving the step batch at its last step."""
    jobs = [job_params(k, args, lengths[k % len(lengths)]) for k in range(n)]
    start = time.perf_counter()
    for future in [pool.submit(run_params, loaded, "flux", params, lambda *_: None) for params in jobs]:
        future.result()
    return time.perf_counter() - start


def table(pool, loaded, args, lengths: list[int]) -> None:
    print(f"\nT5 lengths {lengths}\n")
    print("| concurrent jobs | one at a time (images/s) | batched (images/s) | speed-up | calls per job-step |")
    print("|---|---|---|---|---|")
    for n in args.jobs:
        seq, bat = [], []
        for _ in range(args.repeats):  # alternate so drift in machine load hits both
            seq.append(sequential(loaded, n, args, lengths))
            before = (loaded.batcher.stats.calls, loaded.batcher.stats.job_steps)
            bat.append(batched(pool, loaded, n, args, lengths))
            calls = loaded.batcher.stats.calls - before[0]
            share = calls / max(loaded.batcher.stats.job_steps - before[1], 1)
        s, b = statistics.median(seq), statistics.median(bat)
        print(f"| {n} | {n / s:.2f} | {n / b:.2f} | {s / b:.2f}× | {share:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (latents: half, tokens: /4)")
    parser.add_argument("--heads", type=int, default=4, help="attention heads of 32 dims")
    parser.add_argument("--lengths", type=int, nargs="+", default=[64], help="T5 prompt lengths, in turn")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--model", default="", help="a trained FLUX pipeline folder instead of random tiny widths")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model:
        from worker.pipelines import FluxPipeline

        pipeline = FluxPipeline.from_pretrained(args.model, torch_dtype=torch.float32)
    else:
        pipeline = flux_pipeline(32, args.heads, args.size)
    loaded = load_model("flux-bench", pipeline, max_rows=64)
    pool = ThreadPoolExecutor(max(args.jobs))
    run_alone(loaded, 0, args, args.lengths[0])  # warm-up
    batched(pool, loaded, max(args.jobs), args, args.lengths)
    params = sum(p.numel() for p in loaded.pipeline.transformer.parameters())
    print(f"FLUX-architecture transformer {params / 1e6:.2f} M params, {args.size}×{args.size} pixels "
          f"({(args.size // (2 * loaded.pipeline.vae_scale_factor)) ** 2} image tokens), steps={args.steps}, threads={torch.get_num_threads()}")
    table(pool, loaded, args, args.lengths)
    if len(set(args.lengths)) > 1:
        table(pool, loaded, args, [max(args.lengths)])  # as if padded to the longest
    loaded.close()


if __name__ == "__main__":
    main()
