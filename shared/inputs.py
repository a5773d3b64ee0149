"""Input images (image-to-image, inpaint): from an upload, base64 or a URL; checked before decoding.

Every image is checked for byte size first, then its header is read (Pillow reads the size without
decoding pixels) and its pixel count checked, and only then decoded — a decompression bomb (a
small file of a huge image) is refused before it can take memory. Valid images are re-encoded as
PNG (RGB for images, L for masks) and stored under `inputs/<job id>/<name>.png`.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from PIL import Image

from shared import safehttp
from shared.errors import InputRefused

FORMATS = ("PNG", "JPEG", "WEBP")
# Which stored param names the worker reads, per request field.
INPUT_KEYS = {"image": "image_key", "mask_image": "mask_key"}
MODES = {"image": "RGB", "mask_image": "L"}


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pixels: int


def input_key(job_id: str, field: str) -> str:
    """`inputs/<job id>/image.png` or `inputs/<job id>/mask.png`."""
    return f"inputs/{job_id}/{'mask' if field == 'mask_image' else 'image'}.png"


def decode_base64(text: str, field: str, limits: Limits) -> bytes:
    """Bytes of a base64 string or `data:image/...;base64,` URL, size-checked before decoding."""
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    if len(text) * 3 // 4 > limits.max_bytes:
        raise InputRefused(f"{field} is over {limits.max_bytes} bytes, the most allowed", field=field,
                           code="too_large")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputRefused(f"{field} is not valid base64", field=field, code="bad_image") from None


def fetch(url: str, field: str, policy: safehttp.Policy) -> bytes:
    """GET an image by URL under the SSRF policy; the error names the field."""
    try:
        with safehttp.input_fetches.slot():  # 503 when this process already runs its most fetches
            reply = safehttp.request("GET", url, policy)
    except InputRefused as exc:
        raise InputRefused(f"{field}: {exc.message}", field=field, code=exc.code) from None
    if reply.status != 200:
        raise InputRefused(f"{field}: fetching the URL answered HTTP {reply.status}", field=field,
                           code="fetch_failed")
    return reply.body


def _open(data: bytes, field: str, limits: Limits) -> Image.Image:
    """The image with only its header read; refused if over the byte or pixel limit."""
    if len(data) > limits.max_bytes:
        raise InputRefused(f"{field} is {len(data)} bytes; at most {limits.max_bytes} are allowed",
                           field=field, code="too_large")
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputRefused(f"{field} decodes to too many pixels", field=field, code="too_many_pixels") from None
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError):
        raise InputRefused(f"{field} is not a readable {'/'.join(FORMATS)} image", field=field,
                           code="bad_image") from None
    pixels = image.width * image.height
    if pixels > limits.max_pixels:
        raise InputRefused(f"{field} is {image.width}×{image.height} = {pixels} pixels; at most "
                           f"{limits.max_pixels} are allowed", field=field, code="too_many_pixels")
    return image


def image_size(data: bytes, field: str, limits: Limits) -> tuple[int, int]:
    """(width, height) from the image's header alone: no pixels are decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open(data, field, limits)
        return image.width, image.height


def normalize(data: bytes, field: str, limits: Limits, size: tuple[int, int] | None = None) -> bytes:
    """Check size, format and pixel count before decoding; return the image as PNG bytes, resized
    to `size` (the job's width and height) when given."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open(data, field, limits)
        try:
            image = image.convert(MODES[field])
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InputRefused(f"{field} decodes to too many pixels", field=field, code="too_many_pixels") from None
        except (OSError, ValueError, SyntaxError):
            raise InputRefused(f"{field} is not a readable {'/'.join(FORMATS)} image", field=field,
                               code="bad_image") from None
    if size is not None and image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
