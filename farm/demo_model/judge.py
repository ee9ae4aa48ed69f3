"""Reads a demo-shapes image back: which colour is the background, which colour and shape is drawn.

Pure numpy, so tests can check a render against its prompt:

* every pixel takes the nearest colour of the palette;
* the background is the commonest colour of the outer `BORDER` pixels (the generator never draws a
  shape there);
* the shape is the commonest other colour inside the border, if it covers at least `MIN_AREA` pixels;
* its kind follows from how much of its bounding box it fills: a square fills it, a circle about
  pi/4 of it, a triangle about half;
* it is an outline (the `demo-shapes-outline` style) when the region it encloses has a hole of the
  background's colour: at least `MIN_HOLE` of that region, after closing one-pixel gaps in its edge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from farm.demo_model.data import BORDER, COLOURS, SHAPES

MIN_AREA = 80
# A filled shape encloses no hole (specks inside close up); a 6-pixel outline leaves at least 3% of a
# small triangle and a third of a circle open.
MIN_HOLE = 0.025
_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_NAMES = list(COLOURS)
_PROMPT = re.compile(
    r"^an? (?P<colour>\w+) (?P<shape>\w+) on an? (?P<background>\w+) background$"
)


@dataclass(frozen=True)
class Reading:
    shape: str | None
    colour: str | None
    background: str
    outlined: bool = False  # drawn as an outline rather than filled

    def matches(self, shape: str, colour: str, background: str, check_shape: bool = False) -> bool:
        ok = self.colour == colour and self.background == background
        return ok and (self.shape == shape or not check_shape)


def parse_prompt(prompt: str) -> tuple[str, str, str]:
    """(shape, colour, background) of a canonical prompt such as "a red circle on a blue background"."""
    m = _PROMPT.match(prompt.strip().lower())
    if not m or m["shape"] not in SHAPES or m["colour"] not in COLOURS or m["background"] not in COLOURS:
        raise ValueError(f"not a demo-shapes prompt: {prompt!r}")
    return m["shape"], m["colour"], m["background"]


def classify_pixels(image: np.ndarray) -> np.ndarray:
    """Palette index of every pixel of an HxWx3 uint8 image."""
    px = image.reshape(-1, 3).astype(np.float32)
    d = ((px[:, None, :] - _PALETTE[None, :, :]) ** 2).sum(-1)
    return d.argmin(-1).reshape(image.shape[:2])


def _shape_kind(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask.sum(1) >= 2)
    cols = np.flatnonzero(mask.sum(0) >= 2)
    if len(rows) == 0 or len(cols) == 0:
        return SHAPES[0]
    box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    fill = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].sum() / box
    if fill > 0.9:
        return "square"
    if fill > 0.63:
        return "circle"
    return "triangle"


def _grow(mask: np.ndarray) -> np.ndarray:
    """`mask` and its four neighbours of every pixel."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def enclosed(mask: np.ndarray) -> np.ndarray:
    """`mask` with its holes filled: every pixel not reachable from the edge without crossing it."""
    outside = np.zeros_like(mask)
    outside[[0, -1], :] = outside[:, [0, -1]] = True
    outside &= ~mask
    while True:
        grown = _grow(outside) & ~mask
        if (grown == outside).all():
            return ~outside
        outside = grown


def hole_fraction(mask: np.ndarray) -> float:
    """How much of the region a shape's pixels enclose is not the shape: 0 for a filled shape."""
    closed = _grow(mask)  # a one-pixel gap in an outline does not open its hole to the outside
    region = enclosed(closed)
    return float((region & ~closed).sum() / max(region.sum(), 1))


def read_image(image: np.ndarray) -> Reading:
    """What a 64x64x3 uint8 image shows, as far as colours and rough shape go."""
    classes = classify_pixels(image)
    ring = np.ones(classes.shape, dtype=bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    background = int(np.bincount(classes[ring], minlength=len(_NAMES)).argmax())
    inner = classes[BORDER:-BORDER, BORDER:-BORDER]
    counts = np.bincount(inner[inner != background], minlength=len(_NAMES))
    if counts.max() < MIN_AREA:
        return Reading(None, None, _NAMES[background])
    colour = int(counts.argmax())
    mask = inner == colour
    if hole_fraction(mask) >= MIN_HOLE:  # an outline: its kind shows in the region it encloses
        return Reading(_shape_kind(enclosed(_grow(mask))), _NAMES[colour], _NAMES[background], outlined=True)
    return Reading(_shape_kind(mask), _NAMES[colour], _NAMES[background])
