"""The demo-shapes training data, generated on the fly: one flat-coloured shape on a flat background.

Every image is 64x64 RGB with a circle, square or triangle in one of `COLOURS` on a background of a
different colour, drawn anti-aliased at a random size and position (seeded). Its prompt names the
three facts: "a red circle on a blue background". Nothing is downloaded.

Geometry guarantee used by the checks (`farm.demo_model.judge`): the shape never touches the outer
`BORDER` pixels of the image, so they show the background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIZE = 64
SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 165, 50),
    "blue": (35, 70, 225),
    "yellow": (245, 215, 35),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (245, 135, 20),
    "purple": (135, 45, 185),
}
# Half-extent of a shape in pixels and how far its centre strays from the image centre.
MIN_RADIUS, MAX_RADIUS = 15, 19
MAX_SHIFT = 3
BORDER = 4
SUPERSAMPLE = 4
SQUARE_SIDE = 0.9  # a square's half-side over r: the same area as the circle would look too big
TRIANGLE_BASE = 0.8  # a triangle's base sits 0.8 r below the centre, its apex r above
# How wide the outline of the `demo-shapes-outline` style is, in pixels (the shapes are 30-38 across;
# the demo VAE blurs a thinner band).
OUTLINE_WIDTH = 6.0
# The canonical form three times in five; "a"/"an" as English wants it.
TEMPLATES = (
    "{a_colour} {shape} on {a_background} background",
    "{a_colour} {shape} on {a_background} background",
    "{a_colour} {shape} on {a_background} background",
    "{colour} {shape} on {background} background",
    "{a_colour} {shape}, {background} background",
)


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def format_prompt(template: str, shape: str, colour: str, background: str) -> str:
    return template.format(colour=colour, shape=shape, background=background,
                           a_colour=_article(colour), a_background=_article(background))


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    cx: float
    cy: float
    radius: float

    def prompt(self, template: str = TEMPLATES[0]) -> str:
        return format_prompt(template, self.shape, self.colour, self.background)


def prompt_for(shape: str, colour: str, background: str) -> str:
    """The canonical prompt of a scene ("an orange circle on a blue background"), the form the demo uses."""
    return format_prompt(TEMPLATES[0], shape, colour, background)


def all_combinations() -> list[tuple[str, str, str]]:
    """Every (shape, colour, background) with colour != background: 3 x 8 x 7 = 168."""
    return [(s, c, b) for s in SHAPES for c in COLOURS for b in COLOURS if c != b]


def random_scene(rng: np.random.Generator, combo: tuple[str, str, str] | None = None) -> Scene:
    if combo is None:
        combos = all_combinations()
        combo = combos[rng.integers(len(combos))]
    shape, colour, background = combo
    radius = rng.uniform(MIN_RADIUS, MAX_RADIUS)
    cx, cy = SIZE / 2 + rng.uniform(-MAX_SHIFT, MAX_SHIFT, size=2)
    return Scene(shape, colour, background, float(cx), float(cy), float(radius))


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Which points (offsets from the shape's centre) a filled shape of half-extent `r` covers."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        side = r * SQUARE_SIDE
        return (np.abs(dx) <= side) & (np.abs(dy) <= side)
    if shape == "triangle":
        top, base = -r, TRIANGLE_BASE * r
        return (dy <= base) & (np.abs(dx) <= r * (dy - top) / (base - top))
    raise ValueError(f"unknown shape {shape!r}")


def _incircle(shape: str, r: float) -> tuple[float, float]:
    """(y offset of the centre, radius) of the shape's inscribed circle: shrinking the shape about
    that centre by `width` over that radius moves every edge inwards by `width`."""
    if shape == "circle":
        return 0.0, r
    if shape == "square":
        return 0.0, r * SQUARE_SIDE
    # Apex (0, -r), base corners (+-r, 0.8 r): the incentre weights each corner by its opposite side.
    base = TRIANGLE_BASE * r
    leg = float(np.hypot(r, base + r))
    centre = (2 * r * -r + 2 * leg * base) / (2 * r + 2 * leg)
    return centre, base - centre


def coverage(scene: Scene, outline: bool = False) -> np.ndarray:
    """The fraction of each pixel the shape covers (64x64 floats in [0, 1]), by supersampling; with
    `outline`, only a band `OUTLINE_WIDTH` pixels wide inside its edge (the demo LoRA's style)."""
    n = SIZE * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(coords, coords)
    dx, dy, r = x - scene.cx, y - scene.cy, scene.radius
    inside = _inside(scene.shape, dx, dy, r)
    if outline:
        centre, inradius = _incircle(scene.shape, r)
        grow = inradius / (inradius - OUTLINE_WIDTH)
        inside &= ~_inside(scene.shape, dx * grow, centre + (dy - centre) * grow, r)
    return inside.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean(axis=(1, 3))


def render(scene: Scene, outline: bool = False) -> np.ndarray:
    """The scene as a 64x64x3 uint8 image (the shape filled, or only its outline)."""
    cover = coverage(scene, outline)[..., None]
    fg = np.array(COLOURS[scene.colour], dtype=np.float64)
    bg = np.array(COLOURS[scene.background], dtype=np.float64)
    return np.round(cover * fg + (1 - cover) * bg).astype(np.uint8)


def make_batch(rng: np.random.Generator, n: int, uncond_rate: float = 0.0,
               outline: bool = False) -> tuple[np.ndarray, list[str], list[Scene]]:
    """`n` random images (n x 64 x 64 x 3 uint8), their prompts (some "" for guidance) and scenes."""
    scenes = [random_scene(rng) for _ in range(n)]
    images = np.stack([render(s, outline) for s in scenes])
    prompts = []
    for s in scenes:
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        drop = uncond_rate > 0 and rng.random() < uncond_rate
        prompts.append("" if drop else s.prompt(template))
    return images, prompts, scenes
