"""The init image the img2img and image-to-video tests start from: the demo's picture, a red circle
on blue, drawn here (no file to ship) at an odd size, so that every path resizes or crops it."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


def circle_png(width: int = 48, height: int = 40, background: tuple[int, int, int] = (30, 60, 200)) -> bytes:
    """A red circle on `background`, as a PNG file's bytes."""
    image = Image.new("RGB", (width, height), background)
    ImageDraw.Draw(image).ellipse((10, 6, 36, 32), fill=(220, 30, 30))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
