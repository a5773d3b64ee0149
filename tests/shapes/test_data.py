"""The shapes world: deterministic scenes, captions that say what is drawn, held-out split."""

from __future__ import annotations

import numpy as np
import pytest

from kiln_shapes import data
from kiln_shapes.tokenizer import MAX_LENGTH, build_tokenizer, vocabulary


def test_scenes_and_images_are_deterministic_for_a_seed():
    a, b = data.sample_scenes(20, seed=3), data.sample_scenes(20, seed=3)
    assert a == b
    assert np.array_equal(data.draw_batch(a), data.draw_batch(b))
    assert data.sample_scenes(20, seed=4) != a


def test_caption_says_every_attribute():
    scene = data.Scene("circle", "red", "small", "at the top left", "white")
    assert data.caption(scene) == "a small red circle at the top left on a white background"


def test_drawn_image_has_the_captioned_colours_and_position():
    scene = data.Scene("square", "blue", "large", "on the right", "black")
    image = data.draw(scene)
    assert tuple(image[0, 0]) == data.BACKGROUNDS["black"]
    cx, cy, half = data.geometry(scene)
    assert tuple(image[int(cy), int(cx)]) == data.COLOURS["blue"]
    assert cx > data.IMAGE_SIZE / 2 + 5 and abs(cy - data.IMAGE_SIZE / 2) <= data.JITTER
    covered = (image != data.BACKGROUNDS["black"]).any(axis=-1)
    assert abs(covered.sum() - (2 * half) ** 2) <= 4 * 2 * half  # a filled square, edges anti-aliased


def test_shapes_differ_in_how_much_of_their_box_they_fill():
    fills = {s: data.shape_mask(s, 32, 32, 12).sum() / 24 ** 2 for s in data.SHAPES}
    assert abs(fills["square"] - 1.0) < 0.02
    assert abs(fills["circle"] - np.pi / 4) < 0.02
    assert abs(fills["triangle"] - 0.5) < 0.02


def test_shapes_stay_inside_the_image():
    for position in data.POSITIONS:
        scene = data.Scene("square", "red", "large", position, "white", data.JITTER, -data.JITTER, data.JITTER)
        cx, cy, half = data.geometry(scene)
        assert min(cx, cy) - half >= 0 and max(cx, cy) + half <= data.IMAGE_SIZE


def test_held_out_combinations_never_appear_in_training():
    train, held = data.split_combinations()
    assert len(held) == 100 and len(train) + len(held) == len(data.all_combinations())
    assert not set(train) & set(held)
    assert {c[0] for c in held} == set(data.SHAPES) and {c[1] for c in held} == set(data.COLOURS)


def test_every_caption_word_is_one_token(tmp_path):
    tokenizer = build_tokenizer(tmp_path)
    for word in vocabulary():
        assert len(tokenizer(word).input_ids) == 3, word  # BOS, the word, EOS
    longest = max((data.caption(data.Scene(*c)) for c in data.all_combinations()), key=len)
    assert len(tokenizer(longest).input_ids) <= MAX_LENGTH


def test_scene_from_caption_reads_back_every_caption():
    for combination in data.all_combinations()[::97]:
        scene = data.Scene(*combination)
        assert data.scene_from_caption(data.caption(scene)) == scene
    with pytest.raises(ValueError, match="not a kiln-shapes caption"):
        data.scene_from_caption("a red circle")
