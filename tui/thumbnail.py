"""Preview PNGs drawn in a terminal: every character cell is two pixels, the upper half block in the
top pixel's colour over the bottom pixel's colour, so a 16-column thumbnail shows 16x16 pixels."""

from __future__ import annotations

from io import BytesIO

from PIL import Image, UnidentifiedImageError
from rich.color import Color
from rich.style import Style
from rich.text import Text

UPPER_HALF = "▀"


def half_blocks(png: bytes, width: int) -> Text:
    """`png` scaled to `width` columns, keeping its aspect ratio; a one-line notice if unreadable."""
    try:
        with Image.open(BytesIO(png)) as image:
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError):
        return Text("(unreadable preview)", style="red")
    rows = max(1, round(width * rgb.height / rgb.width / 2))
    small = rgb.resize((width, rows * 2), Image.Resampling.BILINEAR)
    text = Text()
    for row in range(rows):
        if row:
            text.append("\n")
        for x in range(width):
            top, bottom = small.getpixel((x, 2 * row)), small.getpixel((x, 2 * row + 1))
            text.append(UPPER_HALF, Style(color=Color.from_rgb(*top), bgcolor=Color.from_rgb(*bottom)))  # type: ignore[misc]
    return text
