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


def coverage(scene: Scene) -> np.ndarray:
    """The fraction of each pixel the shape covers (64x64 floats in [0, 1]), by supersampling."""
    n = SIZE * SUPERSAMPLE
    coords = (np.arange(n) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(coords, coords)
    dx, dy, r = x - scene.cx, y - scene.cy, scene.radius
    if scene.shape == "circle":
        inside = dx * dx + dy * dy <= r * r
    elif scene.shape == "square":
        side = r * 0.9  # same area as the circle would be unfair to the eye; 0.9 looks balanced
        inside = (np.abs(dx) <= side) & (np.abs(dy) <= side)
    elif scene.shape == "triangle":
        # Pointing up: apex at (0, -r), base from (-r, 0.8 r) to (r, 0.8 r).
        top, base = -r, 0.8 * r
        inside = (dy <= base) & (np.abs(dx) <= r * (dy - top) / (base - top))
    else:
        raise ValueError(f"unknown shape {scene.shape!r}")
    return inside.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).mean(axis=(1, 3))


def render(scene: Scene) -> np.ndarray:
    """The scene as a 64x64x3 uint8 image."""
    cover = coverage(scene)[..., None]
    fg = np.array(COLOURS[scene.colour], dtype=np.float64)
    bg = np.array(COLOURS[scene.background], dtype=np.float64)
    return np.round(cover * fg + (1 - cover) * bg).astype(np.uint8)


def make_batch(rng: np.random.Generator, n: int, uncond_rate: float = 0.0) -> tuple[np.ndarray, list[str], list[Scene]]:
    """`n` random images (n x 64 x 64 x 3 uint8), their prompts (some "" for guidance) and scenes."""
    scenes = [random_scene(rng) for _ in range(n)]
    images = np.stack([render(s) for s in scenes])
    prompts = []
    for s in scenes:
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        drop = uncond_rate > 0 and rng.random() < uncond_rate
        prompts.append("" if drop else s.prompt(template))
    return images, prompts, scenes
