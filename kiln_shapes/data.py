"""The shapes world: procedurally drawn, captioned 64x64 images of one flat shape on a plain background.

Every image is described by a `Scene` (shape, colour, size, position, background); `draw` renders it
with 4x supersampling (anti-aliased edges) and `caption` writes the sentence the model learns from,
e.g. "a small red circle at the top left on a white background". `sample_scenes` is deterministic
for a seed; `split_combinations` holds out whole attribute combinations for evaluation.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

IMAGE_SIZE = 64
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle")
# Object colours, sRGB 0-255; kept far apart in Lab so the evaluator can tell them.
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 30),
    "purple": (140, 50, 190),
    "orange": (245, 130, 20),
}
# Colours the base model never saw, taught by LoRA adapters (docs/kiln-shapes.md); not in `COLOURS`,
# so the base model's combinations, splits and vocabulary stay as they were.
ADAPTER_COLOURS = {"pink": (240, 120, 190)}
PALETTE = {**COLOURS, **ADAPTER_COLOURS}  # every colour `draw` can paint
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
# Half-width of the shape's bounding box in pixels, before jitter.
SIZES = {"small": 8, "large": 15}
# Position name -> (column, row) anchor: -1 = left/top edge, 0 = centre, 1 = right/bottom edge.
POSITIONS = {
    "in the centre": (0, 0),
    "on the left": (-1, 0),
    "on the right": (1, 0),
    "at the top": (0, -1),
    "at the bottom": (0, 1),
    "at the top left": (-1, -1),
    "at the top right": (1, -1),
    "at the bottom left": (-1, 1),
    "at the bottom right": (1, 1),
}
MARGIN = 4  # pixels between an edge-anchored shape and the image border
JITTER = 2  # +- pixels of random offset and size change


class Scene(NamedTuple):
    shape: str
    colour: str
    size: str
    position: str
    background: str
    dx: int = 0  # jitter, pixels
    dy: int = 0
    dr: int = 0


def caption(scene: Scene) -> str:
    """The sentence for a scene: "a {size} {colour} {shape} {position} on a {background} background"."""
    return f"a {scene.size} {scene.colour} {scene.shape} {scene.position} on a {scene.background} background"


def scene_from_caption(text: str) -> Scene:
    """The (unjittered) scene a caption describes, in any palette colour (adapter colours too);
    ValueError if no scene has that caption."""
    for combination in itertools.product(SHAPES, PALETTE, SIZES, POSITIONS, BACKGROUNDS):
        scene = Scene(*combination)
        if caption(scene) == text:
            return scene
    raise ValueError(f"not a kiln-shapes caption: {text!r}")


def all_combinations() -> list[tuple[str, str, str, str, str]]:
    """Every (shape, colour, size, position, background) tuple, in a fixed order (972 of them)."""
    return list(itertools.product(SHAPES, COLOURS, SIZES, POSITIONS, BACKGROUNDS))


def split_combinations(n_held_out: int = 100, seed: int = 1234) -> tuple[list[tuple], list[tuple]]:
    """(train, held_out): `n_held_out` combinations never shown in training, chosen by `seed`.

    The held-out list is in random (fixed) order, so any prefix of it is a varied sample.
    """
    combos = all_combinations()
    order = np.random.default_rng(seed).permutation(len(combos))
    held = [int(i) for i in order[:n_held_out]]
    held_set = set(held)
    return [c for i, c in enumerate(combos) if i not in held_set], [combos[i] for i in held]


def sample_scenes(n: int, seed: int, combinations: list[tuple] | None = None) -> list[Scene]:
    """`n` scenes drawn uniformly from `combinations` (default: all), with jitter; deterministic."""
    combos = combinations or all_combinations()
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(combos), size=n)
    jitter = rng.integers(-JITTER, JITTER + 1, size=(n, 3))
    return [Scene(*combos[int(p)], *(int(v) for v in j)) for p, j in zip(picks, jitter)]


def geometry(scene: Scene) -> tuple[float, float, float]:
    """(centre x, centre y, half-width) of the scene's bounding box, in pixels."""
    half = SIZES[scene.size] + scene.dr
    col, row = POSITIONS[scene.position]
    span = IMAGE_SIZE / 2 - MARGIN - SIZES["large"] - JITTER  # anchor offset that keeps shapes inside
    anchor = IMAGE_SIZE / 2
    return anchor + col * span + scene.dx, anchor + row * span + scene.dy, float(half)


def shape_mask(shape: str, cx: float, cy: float, half: float, size: int = IMAGE_SIZE) -> np.ndarray:
    """Coverage in [0, 1] of each pixel by the shape, (size, size) float32, 4x supersampled.

    Only the pixels of the bounding box (plus one) are sampled; the rest stay 0.
    """
    lo_x, hi_x = max(int(cx - half) - 1, 0), min(int(cx + half) + 2, size)
    lo_y, hi_y = max(int(cy - half) - 1, 0), min(int(cy + half) + 2, size)
    offsets = (np.arange(SUPERSAMPLE, dtype=np.float32) + 0.5) / SUPERSAMPLE
    xs = (np.arange(lo_x, hi_x, dtype=np.float32)[:, None] + offsets).ravel()  # sub-pixel centres
    ys = (np.arange(lo_y, hi_y, dtype=np.float32)[:, None] + offsets).ravel()
    x, y = np.meshgrid(xs, ys)
    inside = _INSIDE[shape]((x - cx) / half, (y - cy) / half)  # box-normalised coordinates
    h, w = hi_y - lo_y, hi_x - lo_x
    coverage = np.zeros((size, size), dtype=np.float32)
    coverage[lo_y:hi_y, lo_x:hi_x] = inside.reshape(h, SUPERSAMPLE, w, SUPERSAMPLE).mean(axis=(1, 3))
    return coverage


_INSIDE = {
    "circle": lambda u, v: u * u + v * v <= 1.0,
    "square": lambda u, v: (np.abs(u) <= 1.0) & (np.abs(v) <= 1.0),
    # Upright isosceles triangle filling the box: apex at the top centre, base along the bottom.
    "triangle": lambda u, v: (v <= 1.0) & (np.abs(u) <= (v + 1.0) / 2.0),
}


def draw(scene: Scene) -> np.ndarray:
    """The scene as a (64, 64, 3) uint8 RGB image."""
    coverage = shape_mask(scene.shape, *geometry(scene))[..., None]  # (H, W, 1)
    fg = np.array(PALETTE[scene.colour], dtype=np.float32)
    bg = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    image = bg * (1.0 - coverage) + fg * coverage
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def draw_batch(scenes: list[Scene]) -> np.ndarray:
    """(N, 64, 64, 3) uint8 images of `scenes`."""
    return np.stack([draw(s) for s in scenes])


def to_tensor_range(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1], the VAE's input range."""
    return images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0
