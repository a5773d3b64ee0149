"""Subcommands of kiln-shapes-flux for `python -m kiln_shapes`:

    python -m kiln_shapes train-flux [--steps 2400 ...]          # train and export models/kiln-shapes-flux
    python -m kiln_shapes export-flux --work-dir ... --weights raw  # export a checkpoint as it stands
"""

from __future__ import annotations

import argparse

from kiln_shapes.config_flags import add_config_flags, config_from
from kiln_shapes.flux_train import FluxTrainConfig


def _config(args: argparse.Namespace) -> FluxTrainConfig:
    return config_from(args, FluxTrainConfig)


def _train(args: argparse.Namespace) -> None:
    from kiln_shapes.flux_train import run

    print(run(_config(args)))


def _export(args: argparse.Namespace) -> None:
    from kiln_shapes.flux_train import export_checkpoint

    print(export_checkpoint(_config(args), weights=args.weights))


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add `train-flux` and `export-flux` to the command line's subparsers."""
    train = commands.add_parser("train-flux", help="train the FLUX-architecture model and export it")
    add_config_flags(train, FluxTrainConfig)
    train.set_defaults(handler=_train)
    export = commands.add_parser("export-flux", help="export the FLUX pipeline from a training checkpoint")
    add_config_flags(export, FluxTrainConfig)
    export.add_argument("--weights", choices=("ema", "raw"), default="ema")
    export.set_defaults(handler=_export)
