"""Images in and out of pipelines: PIL / numpy / torch inputs to model tensors, and back.

Conventions (as in Diffusers): model-side images are (B, C, H, W) in [−1, 1]; user-side numpy
arrays are (B, H, W, C) in [0, 1]; PIL conversion rounds x·255 to uint8; masks are (B, 1, H, W)
binarised to {0, 1} at 0.5.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import PIL.Image
import torch

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | Sequence[Any]


def check_output_type(output_type: str) -> None:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {list(OUTPUT_TYPES)}, not {output_type!r}")


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """[−1, 1] -> [0, 1], clamped."""
    return (images / 2 + 0.5).clamp(0, 1)


def numpy_to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
    """(B, H, W, C) floats in [0, 1] -> PIL images (round(x·255) as uint8; one channel -> "L")."""
    if images.ndim == 3:
        images = images[None]
    pixels = (images * 255).round().astype("uint8")
    if pixels.shape[-1] == 1:
        return [PIL.Image.fromarray(p[..., 0], mode="L") for p in pixels]
    return [PIL.Image.fromarray(p) for p in pixels]


def postprocess(images: torch.Tensor, output_type: str = "pil") -> Any:
    """Model images (B, C, H, W) in [−1, 1] -> `output_type` (`latent` returns them untouched)."""
    check_output_type(output_type)
    if output_type == "latent":
        return images
    images = denormalize(images)
    if output_type == "pt":
        return images
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return array if output_type == "np" else numpy_to_pil(array)


# ---------------------------------------------------------------------------------- inputs
def _as_list(image: ImageInput) -> list[Any]:
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("got an empty list of images")
        return list(image)
    return [image]


def _floor_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    return height - height % multiple, width - width % multiple


def _pil_batch(images: list[PIL.Image.Image], height, width, multiple, mode: str) -> torch.Tensor:
    """PIL images -> (B, C, H, W) floats in [0, 1], resized with Lanczos to a multiple of `multiple`."""
    height, width = _floor_size(height or images[0].height, width or images[0].width, multiple)
    arrays = []
    for image in images:
        resized = image.resize((width, height), resample=PIL.Image.LANCZOS)
        arrays.append(np.asarray(resized.convert(mode)).astype(np.float32) / 255.0)
    batch = np.stack(arrays)  # (B, H, W) or (B, H, W, C)
    if batch.ndim == 3:
        batch = batch[..., None]
    return torch.from_numpy(batch.transpose(0, 3, 1, 2))


def _numpy_bhwc(array: np.ndarray, grayscale: bool) -> np.ndarray:
    """(H, W), (H, W, C), (B, H, W) [grayscale] or (B, H, W, C) -> (B, H, W, C)."""
    if array.ndim == 2:
        return array[None, ..., None]
    if array.ndim == 3:
        if not grayscale or array.shape[-1] == 1:
            return array[None]
        return array[..., None]
    return array


def _torch_bchw(tensor: torch.Tensor, grayscale: bool) -> torch.Tensor:
    """(H, W), (C, H, W), (B, H, W) [grayscale] or (B, C, H, W) -> (B, C, H, W)."""
    if tensor.ndim == 2:
        return tensor[None, None]
    if tensor.ndim == 3:
        return tensor[:, None] if grayscale else tensor[None]
    return tensor


def _array_batch(images: list[Any], height, width, multiple, grayscale: bool = False) -> torch.Tensor:
    """numpy (…, H, W, C) or torch (…, C, H, W) inputs -> (B, C, H, W), resized (nearest)."""
    if isinstance(images[0], np.ndarray):
        batch = np.concatenate([_numpy_bhwc(a, grayscale) for a in images])
        batch = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
    else:
        batch = torch.cat([_torch_bchw(t, grayscale) for t in images])
    size = _floor_size(height or batch.shape[2], width or batch.shape[3], multiple)
    return torch.nn.functional.interpolate(batch.float(), size=size)


def _check_kinds(images: list[Any]) -> None:
    kinds = {type(i) for i in images}
    allowed = (PIL.Image.Image, np.ndarray, torch.Tensor)
    if len(kinds) != 1 or not issubclass(next(iter(kinds)), allowed):
        raise TypeError(
            f"images must be PIL images, numpy arrays or torch tensors, all of one kind; got {kinds}"
        )


def preprocess_image(
    image: ImageInput,
    height: int | None = None,
    width: int | None = None,
    multiple: int = 8,
    latent_channels: int = 4,
) -> torch.Tensor:
    """User images -> (B, 3, H, W) float32 in [−1, 1]; H, W default to the image's, floored to `multiple`.

    Arrays and tensors are expected in [0, 1]; a tensor that already has negative values is
    taken as [−1, 1]. A tensor with `latent_channels` channels is returned as-is (latents).
    """
    images = _as_list(image)
    _check_kinds(images)
    if isinstance(images[0], PIL.Image.Image):
        batch = _pil_batch(images, height, width, multiple, "RGB")
    else:
        first = images[0]
        if isinstance(first, torch.Tensor) and first.ndim >= 3 and first.shape[-3] == latent_channels:
            return torch.cat([t if t.ndim == 4 else t[None] for t in images])
        batch = _array_batch(images, height, width, multiple)
    if batch.min() < 0:
        logger.warning("image values are below 0; taking them as already in [-1, 1]")
        return batch.float()
    return (2.0 * batch - 1.0).float()


def preprocess_mask(
    mask: ImageInput, height: int | None = None, width: int | None = None, multiple: int = 8
) -> torch.Tensor:
    """User masks -> (B, 1, H, W) float32 in {0, 1} (white = repaint), binarised at 0.5."""
    masks = _as_list(mask)
    _check_kinds(masks)
    if isinstance(masks[0], PIL.Image.Image):
        batch = _pil_batch(masks, height, width, multiple, "L")
    else:
        batch = _array_batch(masks, height, width, multiple, grayscale=True)
        if batch.shape[1] != 1:
            batch = batch.float().mean(dim=1, keepdim=True)
    return (batch >= 0.5).float()

