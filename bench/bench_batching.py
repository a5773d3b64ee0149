"""Throughput of the step batcher: N concurrent jobs batched vs the same jobs one at a time.

Runs the worker's own code path (`worker.job_pipeline`: a pipeline view per job, its denoiser behind
the model's `StepBatcher`) in this process, without Celery or Redis, so the ratio measures the
batching alone. Both variants run in the same process, alternating, on the same weights.

    .venv/bin/python bench/bench_batching.py --model bundled --jobs 1 2 4 8 16 --steps 20
    .venv/bin/python bench/bench_batching.py --model sd15 --latent 8 --jobs 1 2 4 8 --steps 4
    .venv/bin/python bench/bench_batching.py --model sd15 --latent 64 --device cuda --dtype float16

`bundled` is the bundled tiny DDPM (32×32 pixels); `shapes` the bundled kiln-shapes text-to-image
model (64×64 pixels, 16×16 latents, guidance on); `sd15` is a Stable Diffusion pipeline with
the full SD 1.5 UNet and VAE architectures (random weights) and a small CLIP text encoder, at
`--latent` × `--latent` latents with guidance on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from worker.job_pipeline import pipeline_for_task  # noqa: E402
from worker.loaded_model import load_model  # noqa: E402


def bundled_pipeline():
    from worker.bundled import write_bundled_model
    from worker.pipelines import DiffusionPipeline

    folder = Path(tempfile.mkdtemp()) / "kiln-ddpm-tiny"
    write_bundled_model(folder)
    return DiffusionPipeline.from_pretrained(folder), "ddpm"


def shapes_pipeline():
    from worker.pipelines import DiffusionPipeline

    folder = Path(__file__).resolve().parents[1] / "models" / "kiln-shapes"
    return DiffusionPipeline.from_pretrained(folder), "sd"


def sd15_pipeline(latent: int):
    from tests.pipelines.tiny import tiny_text_encoder, tiny_tokenizer
    from worker.models import AutoencoderKL, UNet2DConditionModel
    from worker.pipelines import StableDiffusionPipeline
    from worker.schedulers import DDIMScheduler

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=latent, cross_attention_dim=768).eval()
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2).eval()
    text = tiny_text_encoder(hidden=768)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              steps_offset=1, clip_sample=False, set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tiny_tokenizer(), unet=unet,
                                   scheduler=scheduler), "sd"


def job_kwargs(family: str, k: int, steps: int) -> dict:
    kwargs = dict(num_inference_steps=steps, generator=torch.Generator().manual_seed(k), output_type="np")
    if family == "ddpm":
        return kwargs | {"batch_size": 1}
    return kwargs | {"prompt": f"a red circle {k}", "guidance_scale": 7.5}


def run_one(loaded, family, k, steps, session=None):
    task = "unconditional" if family == "ddpm" else "text-to-image"
    pipe = pipeline_for_task(loaded, family, task, "ddim", session)
    with torch.inference_mode():
        return pipe(**job_kwargs(family, k, steps)).images


def sequential(loaded, family, n, steps) -> float:
    start = time.perf_counter()
    for k in range(n):
        run_one(loaded, family, k, steps)
    return time.perf_counter() - start


def batched(pool: ThreadPoolExecutor, loaded, family, n, steps) -> float:
    """N jobs on the pool's long-lived threads, as the worker's Celery threads run them."""
    def target(k):
        with loaded.batcher.session() as session:
            run_one(loaded, family, k, steps, session)

    start = time.perf_counter()
    for future in [pool.submit(target, k) for k in range(n)]:
        future.result()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["bundled", "shapes", "sd15"], default="bundled")
    parser.add_argument("--latent", type=int, default=8)
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    builders = {"bundled": bundled_pipeline, "shapes": shapes_pipeline, "sd15": lambda: sd15_pipeline(args.latent)}
    pipe, family = builders[args.model]()
    pipe = pipe.to(torch.device(args.device), getattr(torch, args.dtype))
    loaded = load_model(args.model, pipe, max_rows=64)
    pool = ThreadPoolExecutor(max(args.jobs))
    run_one(loaded, family, 0, 2)  # warm-up, both paths, every pool thread
    batched(pool, loaded, family, max(args.jobs), 2)
    print(f"model={args.model} steps={args.steps} device={args.device} dtype={args.dtype} "
          f"threads={torch.get_num_threads()}\n")
    print("| concurrent jobs | one at a time (images/s) | batched (images/s) | speed-up |")
    print("|---|---|---|---|")
    for n in args.jobs:
        seq, bat = [], []
        for _ in range(args.repeats):  # alternate so drift in machine load hits both
            seq.append(sequential(loaded, family, n, args.steps))
            bat.append(batched(pool, loaded, family, n, args.steps))
        s, b = statistics.median(seq), statistics.median(bat)
        print(f"| {n} | {n / s:.2f} | {n / b:.2f} | {s / b:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
