"""Command line of kiln-shapes.

    python -m kiln_shapes train [--unet-steps 2000 ...]   # train and export models/kiln-shapes
    python -m kiln_shapes export --work-dir ... --weights raw   # export a checkpoint as it stands
    python -m kiln_shapes evaluate --model models/kiln-shapes --scheduler dpmpp_2m --steps 20
    python -m kiln_shapes sweep dpmpp_2m:20:100 ddim:20:50 --grid-dir docs/images
    python -m kiln_shapes tune-vae [--steps 600 ...]  # the VAE learns every palette colour (base latents kept)
    python -m kiln_shapes train-lora [--steps 600 ...]   # train models/kiln-shapes-pink
    python -m kiln_shapes evaluate-lora --adapter models/kiln-shapes-pink --prompts 54
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from kiln_shapes import data
from kiln_shapes.config_flags import add_config_flags, config_from
from kiln_shapes.train import TrainConfig, run


def _train(args: argparse.Namespace) -> None:
    run(config_from(args, TrainConfig))


def _train_lora(args: argparse.Namespace) -> None:
    from kiln_shapes.lora_train import LoraConfig, train_lora

    print(train_lora(config_from(args, LoraConfig)))


def _tune_vae(args: argparse.Namespace) -> None:
    from kiln_shapes.vae_palette import VaeTuneConfig, reconstruction_scores, tune_vae

    folder = tune_vae(config_from(args, VaeTuneConfig))
    for colours in (["pink"], list(data.COLOURS)):
        print(colours, json.dumps(reconstruction_scores(str(folder), colours)))


def _evaluate_lora(args: argparse.Namespace) -> None:
    from kiln_shapes.lora_evaluate import evaluate_adapter, markdown_table

    rows = evaluate_adapter(args.model, args.adapter, n_prompts=args.prompts, scale=args.scale, steps=args.steps,
                            guidance_scale=args.guidance, seed=args.seed, grid_dir=args.grid_dir)
    print(json.dumps(rows, indent=2))
    print(markdown_table(rows))


def _export(args: argparse.Namespace) -> None:
    from kiln_shapes.train import export_checkpoint

    export_checkpoint(config_from(args, TrainConfig), weights=args.weights, scaling_factor=args.scaling_factor)


def _evaluate(args: argparse.Namespace) -> None:
    from kiln_shapes.evaluate import evaluate_model

    extra = {"max_sequence_length": args.max_sequence_length} if args.max_sequence_length else {}
    result = evaluate_model(args.model, scheduler=args.scheduler, steps=args.steps, n_prompts=args.prompts,
                            guidance_scale=args.guidance, seed=args.seed, grid_path=args.grid, **extra)
    print(json.dumps(result, indent=2))


def _sweep(args: argparse.Namespace) -> None:
    from kiln_shapes.evaluate import markdown_table, sweep

    settings = [(name, int(steps), int(prompts)) for name, steps, prompts in (s.split(":") for s in args.settings)]
    rows = sweep(args.model, settings, guidance_scale=args.guidance, grid_dir=args.grid_dir)
    print(json.dumps(rows, indent=2))
    print(markdown_table(rows))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m kiln_shapes")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train the model and export it")
    add_config_flags(train, TrainConfig)
    train.set_defaults(handler=_train)
    train_lora = commands.add_parser("train-lora", help="train a colour LoRA adapter on the frozen base model")
    from kiln_shapes.lora_train import LoraConfig

    add_config_flags(train_lora, LoraConfig)
    train_lora.set_defaults(handler=_train_lora)
    tune_vae = commands.add_parser("tune-vae", help="teach the VAE every palette colour, base latents anchored")
    from kiln_shapes.vae_palette import VaeTuneConfig

    add_config_flags(tune_vae, VaeTuneConfig)
    tune_vae.set_defaults(handler=_tune_vae)
    evaluate_lora = commands.add_parser("evaluate-lora", help="held-out pink prompts with and without the adapter")
    evaluate_lora.add_argument("--model", default="models/kiln-shapes")
    evaluate_lora.add_argument("--adapter", default="models/kiln-shapes-pink")
    evaluate_lora.add_argument("--prompts", type=int, default=54)
    evaluate_lora.add_argument("--scale", type=float, default=1.0)
    evaluate_lora.add_argument("--steps", type=int, default=20)
    evaluate_lora.add_argument("--guidance", type=float, default=4.0)
    evaluate_lora.add_argument("--seed", type=int, default=0)
    evaluate_lora.add_argument("--grid-dir", default=None, help="write kiln-shapes-pink-with/without.png here")
    evaluate_lora.set_defaults(handler=_evaluate_lora)
    export = commands.add_parser("export", help="export the pipeline from a training checkpoint")
    add_config_flags(export, TrainConfig)
    export.add_argument("--weights", choices=("ema", "raw"), default="ema")
    export.add_argument("--scaling-factor", type=float, default=None, help="default: from work-dir/latents.pt")
    export.set_defaults(handler=_export)
    evaluate = commands.add_parser("evaluate", help="prompt adherence of a model on held-out prompts")
    evaluate.add_argument("--model", default="models/kiln-shapes")
    evaluate.add_argument("--scheduler", default="dpmpp_2m")
    evaluate.add_argument("--steps", type=int, default=20)
    evaluate.add_argument("--prompts", type=int, default=100)
    evaluate.add_argument("--guidance", type=float, default=4.0)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--grid", default=None, help="write a PNG grid of the first 32 images here")
    evaluate.add_argument("--max-sequence-length", type=int, default=0, help="T5 length of a FLUX model (32 for kiln-shapes-flux)")
    evaluate.set_defaults(handler=_evaluate)
    sweep = commands.add_parser("sweep", help="accuracy table over schedulers and step counts")
    sweep.add_argument("settings", nargs="+", help="scheduler:steps:prompts, e.g. dpmpp_2m:20:100")
    sweep.add_argument("--model", default="models/kiln-shapes")
    sweep.add_argument("--guidance", type=float, default=4.0)
    sweep.add_argument("--grid-dir", default=None, help="write kiln-shapes-SCHEDULER-STEPS.png grids here")
    sweep.set_defaults(handler=_sweep)
    from kiln_shapes.flux_cli import add_commands as add_flux_commands

    add_flux_commands(commands)  # train-flux, export-flux
    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
