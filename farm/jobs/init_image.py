"""Init images (img2img) checked at the edge: the file, its pixels, the strength and the step it
starts at, before anything is queued.

The rules, per family, are diffusers' img2img pipelines' own:
- the image is resized to the job's width and height (Lanczos), as A1111's "just resize" and diffusers'
  `VaeImageProcessor` do: width and height say the output's size, the image any size within limits;
- strength is in (0, 1]: 1 re-noises the image completely, smaller keeps more of it;
- of `steps` scheduler steps only the last `steps - first_step` run (`get_timesteps`): SD 1.5 and SDXL
  round `steps * strength` down to whole steps, Flux rounds `steps - steps * strength` down instead
  (so 10 steps at 0.75 run 7 steps on SD, 8 on Flux, as diffusers does), and at least two must run.
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from farm.contracts.errors import InvalidInput

# Families whose img2img pipeline the farm runs, and how each rounds `get_timesteps`.
IMG2IMG_FAMILIES = ("sd15", "sdxl", "flux")
# Image-to-video families: the image is the video's first frame, kept as it is, and every step runs
# (diffusers' I2V pipelines take no strength). Some are separate checkpoints that need the image.
I2V_FAMILIES = ("ltxv", "hunyuanvideo15_i2v", "wan21_i2v", "wan22_i2v")
IMAGE_REQUIRED = ("hunyuanvideo15_i2v", "wan21_i2v", "wan22_i2v")
FLOAT_START = {"flux"}  # `t_start = int(steps - steps * strength)` rather than `steps - int(steps * strength)`
MIN_RUN_STEPS = 2  # as for every job: a shard runs as at least two segments, handed over as a checkpoint
MAX_FILE_BYTES = 32 << 20  # travels once to the head and once to the node that encodes it
MAX_SIDE = 8192
MAX_PIXELS = 40_000_000  # PIL's own decompression-bomb guard is at 89 M; an init image needs far less


def check_strength(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= 1:
        raise InvalidInput("strength", f"must be a number in (0, 1] (above 0, at most 1), got {value!r}")
    return float(value)


def first_step(family: str, steps: int, strength: float) -> int:
    """The first of `steps` scheduler steps an img2img run takes, as the family's pipeline computes it;
    refuses a strength so small that no step would run."""
    if family in FLOAT_START:
        start = int(max(steps - steps * strength, 0))
    else:
        start = max(steps - min(int(steps * strength), steps), 0)
    if steps - start < MIN_RUN_STEPS:
        least = f"above {1 / steps:.3g}" if family in FLOAT_START else f"at least {MIN_RUN_STEPS / steps:.3g}"
        raise InvalidInput("strength", f"must be {least} with {steps} steps (up to 1): it runs {steps - start} of "
                           f"them and a shard runs at least {MIN_RUN_STEPS}, got {strength}")
    return start


def check_family(family: str, model: str) -> None:
    if family not in IMG2IMG_FAMILIES + I2V_FAMILIES:
        raise InvalidInput("init_image", f"{model} ({family}) takes no init image; img2img families: "
                           f"{', '.join(IMG2IMG_FAMILIES)}; image-to-video: {', '.join(I2V_FAMILIES)}")


def check_video_strength(family: str, value: Any) -> None:
    """Image-to-video keeps the image as the first frame and runs every step: no strength but 1."""
    if value is not None and value != 1:
        raise InvalidInput("strength", f"does not apply to image-to-video ({family}: the image is kept as the "
                           f"first frame); leave it out or give 1, got {value!r}")


def image_required(family: str, model: str) -> None:
    if family in IMAGE_REQUIRED:
        raise InvalidInput("init_image", f"{model} ({family}) is an image-to-video model: it needs an init image "
                           "(a PNG, JPEG or WebP file)")


def bucket_size(data: bytes, target: int, patch: int) -> tuple[int, int]:
    """HunyuanVideo-1.5 I2V's output (width, height) for an image: of the sizes of about `target`**2
    pixels in `patch` multiples with aspect ratios up to 4, the one closest to the image's ratio on
    the image's side of square (diffusers' `HunyuanVideo15ImageProcessor.calculate_default_height_width`,
    which the pipeline applies instead of taking a width and height)."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    patches, sizes = round((target / patch) ** 2), []
    wide, high = patches, 1
    while wide > 0:  # `generate_crop_size_list`: (height, width) pairs
        if max(wide, high) / min(wide, high) <= 4.0:
            sizes.append((wide * patch, high * patch))
        if (high + 1) * wide <= patches:
            high += 1
        else:
            wide -= 1
    aspect = height / width
    # `get_closest_ratio`: among ratios on the image's side of 1 (ties: the first listed).
    diffs = [(round(h / w, 5) - aspect, (h, w)) for h, w in sizes]
    side = [(d, size) for d, size in diffs if (d <= 0 if aspect >= 1 else d >= 0)]
    best_h, best_w = min(side, key=lambda pair: abs(pair[0]))[1]
    return best_w, best_h


def check_image(data: bytes, field: str = "init_image") -> str:
    """The SHA-256 of an init image's bytes once PIL has read all of them: a PNG, JPEG or WebP of at
    most `MAX_FILE_BYTES`, each side at most `MAX_SIDE`, at most `MAX_PIXELS` pixels."""
    if len(data) > MAX_FILE_BYTES:
        raise InvalidInput(field, f"must be at most {MAX_FILE_BYTES >> 20} MiB, got {len(data)} bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
                raise InvalidInput(field, f"must be at most {MAX_SIDE} pixels a side and {MAX_PIXELS} in all, "
                                   f"got {width}x{height}")
            image.load()  # every byte decoded: a truncated file is refused here, not on a node
    except InvalidInput:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InvalidInput(field, f"must be an image PIL can read (PNG, JPEG, WebP): {e}") from None
    return hashlib.sha256(data).hexdigest()


def read_image(path: Any) -> bytes:
    """An init image file's bytes, checked (`check_image`)."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise InvalidInput("init_image", f"must be the path of an image file, got {path!r}")
    file = Path(path).expanduser()
    try:
        size = file.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InvalidInput("init_image", f"must be at most {MAX_FILE_BYTES >> 20} MiB, {file} has {size} bytes")
        data = file.read_bytes()
    except FileNotFoundError:
        raise InvalidInput("init_image", f"{file} does not exist") from None
    except IsADirectoryError:
        raise InvalidInput("init_image", f"{file} is a folder, not an image file") from None
    except OSError as e:
        raise InvalidInput("init_image", f"cannot read {file}: {e.strerror or e}") from None
    check_image(data)
    return data
