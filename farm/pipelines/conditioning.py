"""Conditioning images on the node: an init image's file bytes as the PIL image diffusers' image
processors take. The head checked the file when the job was submitted (`farm.jobs.init_image`); this
only opens it again where it is encoded, so the bytes a job is pinned to are the bytes encoded.
"""

from __future__ import annotations

import io

from PIL import Image

from farm.contracts.errors import InvalidInput


def load_image(data: bytes) -> Image.Image:
    """The init image as RGB (diffusers' `load_image` rule: palette, grey and alpha images convert)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise InvalidInput("init_image", f"must be a PNG, JPEG or WebP image PIL can read ({e})") from None


def resized(image: Image.Image, width: int, height: int) -> Image.Image:
    """The image at the job's size, resized as diffusers' `VaeImageProcessor` does (Lanczos) and as
    A1111's "just resize" does: the job's width and height decide, the image is stretched to them."""
    return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.LANCZOS)
