"""Inpainting on a padded crop around the mask (Diffusers' `padding_mask_crop`), then pasting it back.

With a small mask on a large image, inpainting the whole image at the pipeline's size spends most
of the resolution on pixels that are kept anyway. Instead:

1. `crop_region`: the bounding box of the mask's non-zero pixels, grown by `pad` on every side
   (clamped to the image), then grown along one axis to the aspect ratio of the pipeline's
   (width, height), shifted back inside the image where it would leave it;
2. `fill_resize`: image and mask crops are scaled to fit the pipeline's size keeping their aspect
   ratio, centred, and the bands left over are filled by stretching the crop's edge;
3. the pipeline inpaints that;
4. `paste_back`: the result is scaled to cover the crop region (centred, excess cut), pasted there,
   and blended over the original image through the original mask, so pixels outside the mask are
   the original's. The output has the original image's size.

Values follow Diffusers 0.42.1 `VaeImageProcessor` (Lanczos resampling, integer arithmetic of
`get_crop_region`, `_resize_and_fill`, `_resize_and_crop`, `apply_overlay`) so outputs match it.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps

Region = tuple[int, int, int, int]  # (x1, y1, x2, y2), x2 / y2 exclusive, as PIL's crop box


def check_padding_mask_crop(padding_mask_crop: Any, image: Any, mask_image: Any, output_type: str) -> None:
    """Refuse what cropping cannot work with, naming it: a padding that is not an int >= 0, inputs that
    are not single PIL images of one size, an output that is not PIL (the paste-back works on PIL)."""
    if padding_mask_crop is None:
        return
    given = f"padding_mask_crop={padding_mask_crop!r}"
    if isinstance(padding_mask_crop, bool) or not isinstance(padding_mask_crop, numbers.Integral):
        raise ValueError(f"{given}: must be an int >= 0 (pixels of margin around the mask) or None, "
                         f"not a {type(padding_mask_crop).__name__}")
    if padding_mask_crop < 0:
        raise ValueError(f"{given}: must be an int >= 0 (pixels of margin around the mask) or None")
    for name, value in (("image", image), ("mask_image", mask_image)):
        if not isinstance(value, PIL.Image.Image):
            raise ValueError(f"{given} needs `{name}` as one PIL image, got {type(value).__name__}")
    if image.size != mask_image.size:
        raise ValueError(f"{given} needs `image` and `mask_image` of one size, got {image.size} and "
                         f"{mask_image.size}")
    if output_type != "pil":
        raise ValueError(f"{given} needs output_type='pil' (the crop is pasted back onto the PIL input), "
                         f"got {output_type!r}")


def _mask_bounds(mask: np.ndarray) -> Region:
    """(x1, y1, x2, y2) of the non-zero pixels of an (H, W) mask."""
    cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        raise ValueError("padding_mask_crop needs a mask with some non-black pixels; this mask is empty")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _grow_span(lo: int, hi: int, extra: int, limit: int) -> tuple[int, int]:
    """Widen [lo, hi) by `extra` (half before, the rest after), shift it back inside [0, limit), and
    clip what still does not fit."""
    lo, hi = lo - extra // 2, hi + extra - extra // 2
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def crop_region(mask_image: PIL.Image.Image, width: int, height: int, pad: int) -> Region:
    """The mask's bounding box plus `pad`, grown to the aspect ratio width / height (see module doc).

    The ratio test and the growth use Diffusers' float arithmetic (span / ratio, truncated), so the
    region is pixel-for-pixel Diffusers' `get_crop_region`.
    """
    mask = np.asarray(mask_image.convert("L"))
    img_h, img_w = mask.shape
    x1, y1, x2, y2 = _mask_bounds(mask)
    x1, y1, x2, y2 = max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, img_w), min(y2 + pad, img_h)
    ratio = width / height
    if (x2 - x1) / (y2 - y1) > ratio:  # too wide: grow the height
        y1, y2 = _grow_span(y1, y2, int((x2 - x1) / ratio - (y2 - y1)), img_h)
    else:  # too tall (or exact): grow the width
        x1, x2 = _grow_span(x1, x2, int((y2 - y1) * ratio - (x2 - x1)), img_w)
    return x1, y1, x2, y2


def _fitted_size(src_w: int, src_h: int, width: int, height: int, cover: bool) -> tuple[int, int]:
    """Size of the source scaled to fit inside (cover=False) or cover (cover=True) width × height, keeping
    its aspect ratio; the matched side is exact, the other floored. Equal ratios match the height."""
    target, source = width / height, src_w / src_h
    if (target > source) if cover else (target < source):
        return width, src_h * width // src_w
    return src_w * height // src_h, height


def fill_resize(image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    """Scale `image` (Lanczos) to fit in width × height, centre it on an RGB canvas, and fill each empty
    band by stretching the first / last row (or column) of the scaled image across it."""
    fit_w, fit_h = _fitted_size(image.width, image.height, width, height, cover=False)
    fitted = image.resize((fit_w, fit_h), resample=PIL.Image.LANCZOS)
    canvas = PIL.Image.new("RGB", (width, height))
    left, top = width // 2 - fit_w // 2, height // 2 - fit_h // 2
    canvas.paste(fitted, box=(left, top))
    target, source = width / height, image.width / image.height
    if target < source and top > 0:  # bands above and below: stretch the edge rows down
        canvas.paste(fitted.resize((width, top), box=(0, 0, width, 0)), box=(0, 0))
        canvas.paste(fitted.resize((width, top), box=(0, fit_h, width, fit_h)), box=(0, top + fit_h))
    elif target > source and left > 0:  # bands left and right: stretch the edge columns sideways
        canvas.paste(fitted.resize((left, height), box=(0, 0, 0, height)), box=(0, 0))
        canvas.paste(fitted.resize((left, height), box=(fit_w, 0, fit_w, height)), box=(left + fit_w, 0))
    return canvas


def cover_resize(image: PIL.Image.Image, width: int, height: int) -> PIL.Image.Image:
    """Scale `image` (Lanczos) to cover width × height keeping its aspect ratio, centred, excess cut (RGB)."""
    fit_w, fit_h = _fitted_size(image.width, image.height, width, height, cover=True)
    canvas = PIL.Image.new("RGB", (width, height))
    canvas.paste(image.resize((fit_w, fit_h), resample=PIL.Image.LANCZOS),
                 box=(width // 2 - fit_w // 2, height // 2 - fit_h // 2))
    return canvas


def overlay(mask_image: PIL.Image.Image, original: PIL.Image.Image, generated: PIL.Image.Image,
            region: Region) -> PIL.Image.Image:
    """`generated` (the pipeline's output) fitted onto `region` of `original`, shown only through the mask.

    The blend is Diffusers' alpha compositing, rounding included: the original with alpha 255 − m
    (m = the mask in L) is composited over the pasted result, so m = 0 keeps the original exactly
    and m = 255 takes the generated pixel.
    """
    x1, y1, x2, y2 = region
    pasted = PIL.Image.new("RGBA", original.size)  # transparent black outside the region
    pasted.paste(cover_resize(generated, x2 - x1, y2 - y1), (x1, y1))
    pasted = pasted.convert("RGB").convert("RGBA")
    keep = PIL.Image.new("RGBa", original.size)  # premultiplied: the original weighted by 255 − m
    keep.paste(original.convert("RGBA").convert("RGBa"), mask=PIL.ImageOps.invert(mask_image.convert("L")))
    pasted.alpha_composite(keep.convert("RGBA"))
    return pasted.convert("RGB")


@dataclass(frozen=True)
class MaskCrop:
    """One inpainting call's crop: where it lies, and the original inputs to paste the result back onto."""

    region: Region
    image: PIL.Image.Image
    mask_image: PIL.Image.Image

    @classmethod
    def around_mask(cls, image: PIL.Image.Image, mask_image: PIL.Image.Image, width: int, height: int,
                    pad: int) -> MaskCrop:
        """The crop for a pipeline that computes at width × height (as the caller gave them)."""
        return cls(crop_region(mask_image, width, height, pad), image, mask_image)

    def inputs(self, width: int, height: int) -> tuple[PIL.Image.Image, PIL.Image.Image]:
        """(image, mask) cropped to the region and fill-resized to the pipeline's width × height."""
        return (fill_resize(self.image.crop(self.region), width, height),
                fill_resize(self.mask_image.crop(self.region), width, height))

    def paste_back(self, images: list[PIL.Image.Image]) -> list[PIL.Image.Image]:
        """Each generated image blended into the original through the mask, at the original's size."""
        return [overlay(self.mask_image, self.image, generated, self.region) for generated in images]

    def paste_into(self, output: Any) -> Any:
        """A pipeline's PIL output (`ImagePipelineOutput` or tuple, images first) with each image pasted back."""
        if isinstance(output, tuple):
            return (self.paste_back(output[0]), *output[1:])
        output.images = self.paste_back(output.images)
        return output


def crop_for_call(padding_mask_crop: int | None, image: Any, mask_image: Any, width: int, height: int,
                  size: tuple[int, int]) -> tuple[MaskCrop | None, Any, Any]:
    """(crop or None, image, mask) for an inpainting call: with a padding, the inputs become the crop
    fill-resized to `size` (the pipeline's (width, height) after flooring to its multiple); the region's
    aspect ratio follows width / height as the caller gave them, as in Diffusers."""
    if padding_mask_crop is None:
        return None, image, mask_image
    crop = MaskCrop.around_mask(image, mask_image, width, height, padding_mask_crop)
    return (crop, *crop.inputs(*size))
