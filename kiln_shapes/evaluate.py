"""Prompt-adherence evaluator of kiln-shapes: deterministic image analysis, no learned parts.

`judge(image)` reads a 64x64 RGB image and tells the main object's colour, shape, position and
size, and the background:
1. background = per-channel median of the border pixels;
2. object core = pixels far from the background in CIE Lab (distance > 25), its colour the median
   of the core's most distant half; every pixel is then placed on the segment background -> object
   colour (projection t in [0, 1]) and the object mask is t > 0.5, keeping the largest
   4-connected component;
3. colour = nearest palette entry in Lab to the mask's median colour;
4. shape from the mask: fill ratio of its bounding box (square 1, circle pi/4, triangle 1/2) and
   the width of its top third over its bottom third (an upright triangle is much narrower on top);
5. position from the bounding-box centre (thirds of the image), size from its width.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import NamedTuple

import numpy as np

from kiln_shapes import data

logger = logging.getLogger(__name__)

MIN_LAB_DISTANCE = 25.0  # a pixel this far (Lab units) from the background may belong to the object
SQUARE_FILL = 0.87  # fill ratio at or above this: square
TRIANGLE_FILL = 0.64  # fill ratio below this: triangle
TRIANGLE_TAPER = 0.62  # top-third width / bottom-third width below this: triangle
CENTRE_BAND = 5.5  # pixels either side of the image centre that count as centred
LARGE_WIDTH = 23  # bounding-box width in pixels from which a shape is "large"


class Verdict(NamedTuple):
    colour: str | None
    shape: str | None
    position: str | None
    size: str | None
    background: str
    fill: float = 0.0
    taper: float = 0.0


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB 0-255 (..., 3) -> CIE L*a*b* (D65), per IEC 61966-2-1 and CIE 15:2004."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def nearest(lab: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    """Name of the palette colour nearest to `lab` (3,) in Lab."""
    names = list(palette)
    distances = np.linalg.norm(srgb_to_lab(np.array([palette[n] for n in names])) - lab, axis=-1)
    return names[int(np.argmin(distances))]


def border_median(image: np.ndarray) -> np.ndarray:
    """Per-channel median (3,) of the one-pixel border of an (H, W, 3) image."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return np.median(border.astype(np.float64), axis=0)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean (H, W) mask (breadth-first labelling)."""
    seen = np.zeros_like(mask, dtype=bool)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        region, queue = [], deque([start])
        while queue:
            y, x = queue.popleft()
            region.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        best = region if len(region) > len(best) else best
    out = np.zeros_like(mask, dtype=bool)
    if best:
        out[tuple(np.array(best).T)] = True
    return out


def object_mask(image: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Boolean (H, W) mask of the main object, or all False when nothing stands out."""
    distance = np.linalg.norm(srgb_to_lab(image) - srgb_to_lab(background), axis=-1)  # (H, W)
    candidates = distance > MIN_LAB_DISTANCE
    if candidates.sum() < 4:
        return np.zeros(distance.shape, dtype=bool)
    core = candidates & (distance >= np.median(distance[candidates]))
    colour = np.median(image[core].astype(np.float64), axis=0)
    axis = colour - background  # (3,)
    t = (image.astype(np.float64) - background) @ axis / max(float(axis @ axis), 1e-6)  # (H, W)
    return largest_component((t > 0.5) & candidates)


def shape_of(mask: np.ndarray) -> tuple[str, float, float]:
    """(shape, fill ratio, taper) of a non-empty object mask."""
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    box = mask[top:bottom, left:right]
    fill = float(box.mean())
    third = max(box.shape[0] // 3, 1)
    top_width = box[:third].sum(axis=1).mean()
    bottom_width = max(box[-third:].sum(axis=1).mean(), 1.0)
    taper = float(top_width / bottom_width)
    if fill < TRIANGLE_FILL or taper < TRIANGLE_TAPER:
        return "triangle", fill, taper
    return ("square" if fill >= SQUARE_FILL else "circle"), fill, taper


def position_of(mask: np.ndarray) -> str:
    """Position phrase of the bounding-box centre, as in `data.POSITIONS`."""
    ys, xs = np.nonzero(mask)
    centre = (mask.shape[1] / 2, mask.shape[0] / 2)
    anchor = []
    for low, high, mid in ((xs.min(), xs.max() + 1, centre[0]), (ys.min(), ys.max() + 1, centre[1])):
        offset = (low + high) / 2 - mid
        anchor.append(0 if abs(offset) <= CENTRE_BAND else int(np.sign(offset)))
    return next(name for name, where in data.POSITIONS.items() if where == tuple(anchor))


def judge(image: np.ndarray, palette: dict[str, tuple[int, int, int]] | None = None) -> Verdict:
    """Verdict on one (H, W, 3) uint8 RGB image; colour/shape/position/size are None without an object.

    `palette`: the colours the verdict may name (default `data.COLOURS`, the base model's; pass
    `data.PALETTE` to also recognise the adapter colours such as pink)."""
    background = border_median(image)
    background_name = nearest(srgb_to_lab(background), data.BACKGROUNDS)
    mask = object_mask(image, background)
    if mask.sum() < 4:
        return Verdict(None, None, None, None, background_name)
    colour = nearest(np.median(srgb_to_lab(image[mask]), axis=0), palette or data.COLOURS)
    shape, fill, taper = shape_of(mask)
    width = int(np.ptp(np.nonzero(mask.any(axis=0))[0])) + 1
    size = "large" if width >= LARGE_WIDTH else "small"
    return Verdict(colour, shape, position_of(mask), size, background_name, fill, taper)


def colour_error(image: np.ndarray, colour: str) -> float:
    """CIE76 ΔE between the object's median colour and the palette colour `colour` (inf without an
    object). Nearest-colour naming alone calls a crimson or magenta blob "pink" when pink is merely
    the closest of the seven; this says how close it is."""
    mask = object_mask(image, border_median(image))
    if mask.sum() < 4:
        return float("inf")
    drawn = np.median(srgb_to_lab(image[mask]), axis=0)
    return float(np.linalg.norm(drawn - srgb_to_lab(np.array(data.PALETTE[colour]))))


# ---------------------------------------------------------------------------------------- models
FIELDS = ("colour", "shape", "position", "size", "background")


def held_out_scenes(n: int = 100) -> list[data.Scene]:
    """The first `n` held-out combinations (never seen in training), one un-jittered scene each."""
    _, held = data.split_combinations()
    return [data.Scene(*combo) for combo in held[:n]]


def score(scenes: list[data.Scene], images: np.ndarray,
          palette: dict[str, tuple[int, int, int]] | None = None) -> dict[str, float]:
    """Fraction of images whose verdict matches the scene, per attribute (colours named from `palette`)."""
    verdicts = [judge(image, palette) for image in images]
    return {f: float(np.mean([getattr(v, f) == getattr(s, f) for v, s in zip(verdicts, scenes)])) for f in FIELDS}


def generate(pipe, prompts: list[str], steps: int, guidance_scale: float, seed: int,
             batch_size: int = 25, **pipe_kwargs) -> np.ndarray:
    """(N, 64, 64, 3) uint8 images; prompt i uses a generator seeded `seed + i` (batch-independent).

    `pipe_kwargs` go to every pipeline call (e.g. `max_sequence_length` of a FLUX model, which must
    match the length it was trained with)."""
    import torch

    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        images = pipe(chunk, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators,
                      height=data.IMAGE_SIZE, width=data.IMAGE_SIZE, output_type="np", **pipe_kwargs).images
        out.append(np.clip(np.rint(images * 255), 0, 255).astype(np.uint8))
    return np.concatenate(out)


def save_grid(images: np.ndarray, path: str, columns: int = 8, scale: int = 2) -> None:
    """Write up to 4 rows of `columns` images as one PNG, each upscaled `scale` times."""
    from PIL import Image

    images = images[: columns * max(len(images) // columns, 1)][: columns * 4]
    rows = [np.concatenate(list(images[i:i + columns]), axis=1) for i in range(0, len(images), columns)]
    grid = np.concatenate(rows, axis=0).repeat(scale, axis=0).repeat(scale, axis=1)
    Image.fromarray(grid).save(path)


def evaluate_model(model: str, scheduler: str = "dpmpp_2m", steps: int = 20, n_prompts: int = 100,
                   guidance_scale: float = 4.0, seed: int = 0, grid_path: str | None = None, pipe=None,
                   **pipe_kwargs) -> dict:
    """Accuracy of a kiln-shapes model on held-out prompts with one scheduler and step count
    (`pipe_kwargs`: extra pipeline arguments, as in `generate`)."""
    from worker.pipelines import DiffusionPipeline
    from worker.job_scheduler import build_scheduler

    pipe = pipe or DiffusionPipeline.from_pretrained(model)
    pipe.scheduler = build_scheduler(scheduler, pipe.scheduler)
    scenes = held_out_scenes(n_prompts)
    images = generate(pipe, [data.caption(s) for s in scenes], steps, guidance_scale, seed, **pipe_kwargs)
    if grid_path:
        save_grid(images, grid_path)
    return {"scheduler": scheduler, "steps": steps, "guidance_scale": guidance_scale, "prompts": len(scenes),
            **score(scenes, images)}


def sweep(model: str, settings: list[tuple[str, int, int]], guidance_scale: float = 4.0,
          grid_dir: str | None = None) -> list[dict]:
    """`evaluate_model` for each (scheduler, steps, prompts), loading the model once; grids in `grid_dir`."""
    from worker.pipelines import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model)
    rows = []
    for scheduler, steps, n_prompts in settings:
        grid = f"{grid_dir}/kiln-shapes-{scheduler}-{steps}.png" if grid_dir else None
        rows.append(evaluate_model(model, scheduler, steps, n_prompts, guidance_scale, grid_path=grid, pipe=pipe))
        logger.info("%s", rows[-1])
    return rows


def percent_table(rows: list[dict], labels: tuple[str, ...], fields: tuple[str, ...],
                  headers: dict[str, str] | None = None) -> str:
    """A Markdown table: the `labels` columns as they are, the `fields` columns (shares) in percent;
    `headers` renames columns."""
    names = [(headers or {}).get(c, c) for c in (*labels, *fields)]
    lines = ["| " + " | ".join(names) + " |", "|---" * len(names) + "|"]
    for row in rows:
        cells = [str(row[c]) for c in labels] + [f"{100 * row[f]:.0f} %" for f in fields]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    """Rows of `sweep` as a Markdown table (accuracies in percent)."""
    return percent_table(rows, ("scheduler", "steps", "prompts"), FIELDS)
