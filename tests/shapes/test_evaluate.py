"""The prompt-adherence evaluator on drawn ground truth (and on images it must not be fooled by)."""

from __future__ import annotations

import numpy as np
import pytest

from kiln_shapes import data
from kiln_shapes.evaluate import FIELDS, held_out_scenes, judge, save_grid, score, srgb_to_lab


def test_evaluator_reads_every_attribute_of_drawn_scenes():
    scenes = data.sample_scenes(200, seed=11)
    accuracy = score(scenes, data.draw_batch(scenes))
    assert accuracy == {field: 1.0 for field in FIELDS}


@pytest.mark.parametrize("shape", data.SHAPES)
def test_shape_survives_blur(shape):
    scene = data.Scene(shape, "green", "large", "in the centre", "white")
    image = data.draw(scene).astype(np.float64)
    blurred = (image + np.roll(image, 1, 0) + np.roll(image, -1, 0) + np.roll(image, 1, 1) + np.roll(image, -1, 1)) / 5
    assert judge(blurred.astype(np.uint8)).shape == shape


def test_empty_image_has_no_object():
    image = np.full((64, 64, 3), 255, dtype=np.uint8)
    verdict = judge(image)
    assert verdict.colour is None and verdict.shape is None and verdict.background == "white"


def test_noise_speck_does_not_win_over_the_object():
    image = data.draw(data.Scene("circle", "orange", "small", "at the bottom", "gray"))
    image[2:4, 2:4] = data.COLOURS["blue"]
    verdict = judge(image)
    assert (verdict.colour, verdict.shape, verdict.position) == ("orange", "circle", "at the bottom")


def test_lab_of_white_and_black():
    np.testing.assert_allclose(srgb_to_lab(np.array([255, 255, 255])), [100, 0, 0], atol=0.05)
    np.testing.assert_allclose(srgb_to_lab(np.array([0, 0, 0])), [0, 0, 0], atol=1e-9)


def test_held_out_scenes_are_fixed_and_grid_is_written(tmp_path):
    scenes = held_out_scenes(16)
    assert scenes == held_out_scenes(16) and len(set(scenes)) == 16
    save_grid(data.draw_batch(scenes), str(tmp_path / "grid.png"))
    from PIL import Image

    assert Image.open(tmp_path / "grid.png").size == (8 * 64 * 2, 2 * 64 * 2)
