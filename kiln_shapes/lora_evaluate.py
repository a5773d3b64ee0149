"""Evaluation of a colour adapter: held-out new-colour prompts with and without it, ordinary prompts with it.

Colours are judged against `data.PALETTE` (base colours plus the adapter colours), so an image
counts as pink only when pink is its nearest palette colour; `colour ΔE ≤ 20` further asks that the
object's median colour lie within CIE76 ΔE 20 of the asked one (a crimson or magenta blob may have
pink as its nearest palette colour without being pink).
"""

from __future__ import annotations

import logging
from typing import Any

from kiln_shapes import data
import numpy as np

from kiln_shapes.evaluate import colour_error, generate, percent_table, save_grid, score
from kiln_shapes.lora_train import colour_split

logger = logging.getLogger(__name__)
CLOSE_DELTA_E = 20.0


def _row(pipe: Any, label: str, scenes: list[data.Scene], steps: int, guidance: float, seed: int,
         grid: str | None) -> dict:
    images = generate(pipe, [data.caption(s) for s in scenes], steps, guidance, seed)
    if grid:
        save_grid(images, grid)
    close = np.mean([colour_error(image, s.colour) <= CLOSE_DELTA_E for image, s in zip(images, scenes)])
    row = {"setting": label, "prompts": len(scenes), **score(scenes, images, data.PALETTE), "colour_close": float(close)}
    logger.info("%s", row)
    return row


def evaluate_adapter(base: str, adapter: str, adapter_name: str = "kiln-shapes-pink", colour: str = "pink",
                     n_prompts: int = 54, scale: float = 1.0, steps: int = 20, guidance_scale: float = 4.0,
                     seed: int = 0, grid_dir: str | None = None) -> list[dict]:
    """Rows: new colour without the adapter, with it at `scale`, and held-out base prompts with it."""
    from kiln_shapes.evaluate import held_out_scenes
    from worker.pipelines import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(base)
    held = [data.Scene(*combo) for combo in colour_split(colour)[1][:n_prompts]]
    grid = (lambda name: f"{grid_dir}/{adapter_name}-{name}.png") if grid_dir else (lambda name: None)
    rows = [_row(pipe, f"{colour}, no adapter", held, steps, guidance_scale, seed, grid("without"))]
    pipe.load_lora_weights(adapter, adapter_name=adapter_name)
    pipe.set_adapters(adapter_name, scale)
    rows.append(_row(pipe, f"{colour}, adapter {scale:g}", held, steps, guidance_scale, seed, grid("with")))
    rows.append(_row(pipe, f"base colours, adapter {scale:g}", held_out_scenes(n_prompts), steps, guidance_scale,
                     seed, None))
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Rows of `evaluate_adapter` as a Markdown table (accuracies in percent)."""
    fields = ("colour", "colour_close", "shape", "position", "size", "background")
    return percent_table(rows, ("setting", "prompts"), fields, {"colour_close": f"colour ΔE ≤ {CLOSE_DELTA_E:g}"})
