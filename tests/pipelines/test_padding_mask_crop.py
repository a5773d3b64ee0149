"""`padding_mask_crop` on the inpainting pipelines (SD 9- and 4-channel, FLUX): Kiln inpaints the padded crop
around the mask and pastes it back as Diffusers does (the oracle), and refuses what it cannot crop by name."""

from __future__ import annotations

import diffusers
import numpy as np
import PIL.Image
import pytest
from diffusers.image_processor import VaeImageProcessor

from tests.pipelines import tiny, tiny_flow
from tests.pipelines.tiny import MAX_PIXEL_DIFF, max_diff, seeded
from worker.pipelines import FluxInpaintPipeline, StableDiffusionInpaintPipeline
from worker.pipelines.mask_crop import crop_region, fill_resize, overlay


def _image(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.RandomState(seed).randint(0, 256, (height, width, 3), dtype=np.uint8))


def _mask(width: int, height: int, box: tuple[int, int, int, int], value: int = 255) -> PIL.Image.Image:
    x1, y1, x2, y2 = box
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y1:y2, x1:x2] = value
    return PIL.Image.fromarray(mask)


def _soft_mask(width: int, height: int, box: tuple[int, int, int, int]) -> PIL.Image.Image:
    """A box with a grey ring (values 1..254 too), so the paste-back blend is exercised between 0 and 1."""
    x1, y1, x2, y2 = box
    mask = np.asarray(_mask(width, height, (x1 - 2, y1 - 2, x2 + 2, y2 + 2), 90)).copy()
    mask[y1:y2, x1:x2] = 255
    return PIL.Image.fromarray(mask)


# (image W×H, mask box, pipeline W×H): off-centre box; box touching the right and bottom borders;
# box on the top-left corner of a tall image; a soft-edged box (grey ring).
CASES = {
    "small-off-centre-box": ((48, 40), (30, 6, 38, 14), (32, 32), "hard"),
    "touches-border": ((56, 40), (40, 28, 56, 40), (40, 24), "hard"),
    "corner-tall-image": ((37, 61), (0, 0, 9, 12), (24, 40), "hard"),
    "soft-edges": ((64, 48), (20, 14, 34, 26), (32, 32), "soft"),
}
PADDINGS = (0, 6)


def _case(name: str):
    (iw, ih), box, (pw, ph), kind = CASES[name]
    mask = _mask(iw, ih, box) if kind == "hard" else _soft_mask(iw, ih, box)
    return _image(iw, ih), mask, dict(width=pw, height=ph)


def _assert_same_pil(got, expected, image):
    """PIL outputs: the input's size, and equal within the parity bound (in [0, 1] units, so uint8 equal)."""
    assert len(got) == len(expected)
    for ours, theirs in zip(got, expected):
        assert isinstance(ours, PIL.Image.Image) and ours.size == image.size == theirs.size
        assert max_diff(np.asarray(ours) / 255, np.asarray(theirs) / 255) < MAX_PIXEL_DIFF


# ---------------------------------------------------------------------------------- the helpers, against Diffusers
def test_crop_region_fill_and_overlay_match_diffusers_on_random_boxes():
    rng = np.random.RandomState(0)
    processor = VaeImageProcessor(vae_scale_factor=8)
    for _ in range(150):
        iw, ih = rng.randint(8, 80, size=2)
        x1, y1 = rng.randint(0, iw), rng.randint(0, ih)
        box = (x1, y1, rng.randint(x1 + 1, iw + 1), rng.randint(y1 + 1, ih + 1))
        mask = _mask(iw, ih, box, int(rng.choice([255, 200, 40])))
        width, height, pad = int(rng.choice([16, 24, 40, 64])), int(rng.choice([16, 32, 48])), int(rng.randint(0, 20))
        region = crop_region(mask, width, height, pad)
        assert region == tuple(processor.get_crop_region(mask, width, height, pad=pad)), (iw, ih, box, pad)
        image = _image(iw, ih, seed=int(rng.randint(1000)))
        for source in (image, mask):
            expected = processor.resize(source.crop(region), height, width, resize_mode="fill")
            assert np.array_equal(np.asarray(fill_resize(source.crop(region), width, height)), np.asarray(expected))
        generated = _image(width, height, seed=int(rng.randint(1000)))
        expected = processor.apply_overlay(mask, image, generated, region)
        assert np.array_equal(np.asarray(overlay(mask, image, generated, region)), np.asarray(expected))


def test_crop_region_keeps_the_mask_and_takes_the_pipeline_aspect_ratio():
    mask = _mask(100, 60, (70, 10, 80, 20))
    x1, y1, x2, y2 = crop_region(mask, 32, 16, 5)
    assert (x1, y1, x2, y2) == (55, 5, 95, 25)  # 10 + 2·5 = 20 high -> 40 wide, centred on the box
    assert crop_region(mask, 16, 32, 0) == (70, 5, 80, 25)  # 10 wide -> 20 high
    assert crop_region(_mask(100, 60, (90, 50, 100, 60)), 32, 16, 4) == (72, 46, 100, 60)  # shifted inside


# ---------------------------------------------------------------------------------- pipelines, against Diffusers
@pytest.fixture(scope="module")
def sd_inpaint_pairs(tmp_path_factory):
    """{in_channels: (diffusers, Kiln)} SD inpainting pipelines on the same tiny weights."""
    pairs = {}
    for channels in (9, 4):
        folder = tmp_path_factory.mktemp(f"sd-inpaint-{channels}")
        tiny.tiny_sd_pipeline(in_channels=channels, inpaint=True).save_pretrained(folder)
        pairs[channels] = (diffusers.StableDiffusionInpaintPipeline.from_pretrained(folder),
                           StableDiffusionInpaintPipeline.from_pretrained(folder))
    return pairs


@pytest.fixture(scope="module")
def flux_inpaint_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flux-inpaint")
    tiny_flow.tiny_flux_pipeline(task="inpaint").save_pretrained(folder)
    return diffusers.FluxInpaintPipeline.from_pretrained(folder), FluxInpaintPipeline.from_pretrained(folder)


@pytest.mark.parametrize("pad", PADDINGS)
@pytest.mark.parametrize("case", CASES)
def test_sd_inpaint_crop_matches_diffusers(sd_inpaint_pairs, case, pad):
    ref, pipe = sd_inpaint_pairs[9]
    image, mask, size = _case(case)
    args = dict(prompt="a cat", image=image, mask_image=mask, padding_mask_crop=pad, num_inference_steps=2, **size)
    _assert_same_pil(pipe(generator=seeded(3), **args).images, ref(generator=seeded(3), **args).images, image)


@pytest.mark.parametrize("pad", PADDINGS)
def test_sd_inpaint_4_channel_crop_with_strength_and_batch_matches_diffusers(sd_inpaint_pairs, pad):
    ref, pipe = sd_inpaint_pairs[4]
    image, mask, size = _case("touches-border")
    args = dict(prompt="a red dog", image=image, mask_image=mask, padding_mask_crop=pad, strength=0.75,
                num_inference_steps=4, num_images_per_prompt=2, **size)
    got = pipe(generator=[seeded(5), seeded(6)], **args).images
    _assert_same_pil(got, ref(generator=[seeded(5), seeded(6)], **args).images, image)


@pytest.mark.parametrize("pad", PADDINGS)
@pytest.mark.parametrize("case", ["small-off-centre-box", "touches-border", "corner-tall-image"])
def test_flux_inpaint_crop_matches_diffusers(flux_inpaint_pair, case, pad):
    ref, pipe = flux_inpaint_pair
    image, mask, size = _case(case)
    args = dict(prompt="a cat", image=image, mask_image=mask, padding_mask_crop=pad, strength=0.8,
                num_inference_steps=2, max_sequence_length=16, **size)
    _assert_same_pil(pipe(generator=seeded(7), **args).images, ref(generator=seeded(7), **args).images, image)


def test_flux_inpaint_crop_with_unfloored_size_matches_diffusers(flux_inpaint_pair):
    """The region follows the size as given (40×24), the pixels the size floored to whole patches (32×16)."""
    ref, pipe = flux_inpaint_pair
    image, mask, _ = _case("small-off-centre-box")
    args = dict(prompt="a cat", image=image, mask_image=mask, padding_mask_crop=3, height=24, width=40,
                num_inference_steps=2, max_sequence_length=16)
    _assert_same_pil(pipe(generator=seeded(2), **args).images, ref(generator=seeded(2), **args).images, image)


def test_sd_inpaint_crop_keeps_every_pixel_outside_the_mask(sd_inpaint_pairs):
    _, pipe = sd_inpaint_pairs[9]
    image, mask, size = _case("small-off-centre-box")
    out = pipe(prompt="a cat", image=image, mask_image=mask, padding_mask_crop=4, num_inference_steps=2,
               generator=seeded(0), return_dict=False, **size)[0][0]
    outside = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(out)[outside], np.asarray(image)[outside])
    assert not np.array_equal(np.asarray(out)[~outside], np.asarray(image)[~outside])


# ---------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("bad", [-1, 2.5, "8", True, [4]])
def test_bad_padding_is_a_value_error_naming_it(sd_inpaint_pairs, flux_inpaint_pair, bad):
    image, mask, size = _case("small-off-centre-box")
    for pipe in (sd_inpaint_pairs[9][1], flux_inpaint_pair[1]):
        with pytest.raises(ValueError, match=r"padding_mask_crop=.*: must be an int >= 0"):
            pipe(prompt="a cat", image=image, mask_image=mask, padding_mask_crop=bad, num_inference_steps=1, **size)


def test_what_cannot_be_cropped_is_refused_by_name(sd_inpaint_pairs):
    _, pipe = sd_inpaint_pairs[9]
    image, mask, size = _case("small-off-centre-box")
    args = dict(prompt="a cat", padding_mask_crop=4, num_inference_steps=1, **size)
    with pytest.raises(ValueError, match="output_type='pil'"):
        pipe(image=image, mask_image=mask, output_type="np", **args)
    with pytest.raises(ValueError, match="`image` as one PIL image, got ndarray"):
        pipe(image=np.asarray(image), mask_image=mask, **args)
    with pytest.raises(ValueError, match="`mask_image` as one PIL image, got list"):
        pipe(image=image, mask_image=[mask], **args)
    with pytest.raises(ValueError, match="of one size"):
        pipe(image=image, mask_image=mask.resize((20, 20)), **args)
    with pytest.raises(ValueError, match="mask is empty"):
        pipe(image=image, mask_image=_mask(*image.size, (0, 0, 0, 0)), **args)
