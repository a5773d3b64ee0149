"""Subcommands of kiln-shapes-flux for `python -m kiln_shapes`:

    python -m kiln_shapes train-flux [--steps 2400 ...]          # train and export models/kiln-shapes-flux
    python -m kiln_shapes export-flux --work-dir ... --weights raw  # export a checkpoint as it stands
"""

from __future__ import annotations

import argparse
import dataclasses

from kiln_shapes.flux_train import FluxTrainConfig


def _config(args: argparse.Namespace) -> FluxTrainConfig:
    names = {f.name for f in dataclasses.fields(FluxTrainConfig)}
    return FluxTrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def _train(args: argparse.Namespace) -> None:
    from kiln_shapes.flux_train import run

    print(run(_config(args)))


def _export(args: argparse.Namespace) -> None:
    from kiln_shapes.flux_train import export_checkpoint

    print(export_checkpoint(_config(args), weights=args.weights))


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for field in dataclasses.fields(FluxTrainConfig):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=field.default)


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `train-flux` and `export-flux` to the command line's subparsers."""
    train = commands.add_parser("train-flux", help="train the FLUX-architecture model and export it")
    _add_config_flags(train)
    train.set_defaults(handler=_train)
    export = commands.add_parser("export-flux", help="export the FLUX pipeline from a training checkpoint")
    _add_config_flags(export)
    export.add_argument("--weights", choices=("ema", "raw"), default="ema")
    export.set_defaults(handler=_export)
