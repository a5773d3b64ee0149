"""The bundled model: a tiny unconditional DDPM in the Diffusers layout, random weights.

`python -m worker.bundled [folder]` writes it (deterministically, from a fixed seed) so that a
fresh `make up` serves something with no network. It goes through our own `save_pretrained`,
and workers load it through the real `DiffusionPipeline.from_pretrained` path.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

UNET_CONFIG = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
)


def write_bundled_model(folder: Path, seed: int = 0) -> Path:
    """Write the bundled DDPM pipeline into `folder` (replacing nothing that exists)."""
    from worker.models import UNet2DModel
    from worker.pipelines import DDPMPipeline
    from worker.schedulers import DDPMScheduler

    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(seed)
    unet = UNet2DModel(**UNET_CONFIG)
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    logger.info("wrote the bundled model to %s", folder)
    return folder


def main() -> None:
    from shared.catalog import BUNDLED_MODEL
    from shared.settings import get_settings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=get_settings().models_dir / BUNDLED_MODEL)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    print(write_bundled_model(args.folder))


if __name__ == "__main__":
    main()
