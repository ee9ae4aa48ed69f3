"""Validation of jobs at the edge (pure): a bad field is refused before anything is queued.

Each check names the field and the allowed range, because the message is all a user sees.
`load_job_file` reads the same fields from TOML, so `farm run JOB.toml` and `farm render` agree.
`load_job_request` is `farm submit`'s: the job goes to a head, which alone knows its models and
adapters (the client PC may have neither), so the client checks the form of each field and the head
checks the rest (`farm.api.convert.spec_from_proto` runs `make_job` there).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.contracts.domain import JobSpec
from farm.contracts.errors import InvalidInput
from farm.core import limits
from farm.jobs import init_image as init
from farm.jobs.catalog import get_model
from farm.jobs.loras import check_lora_form, check_loras
from farm.jobs.sources import LIMITS

MAX_PROMPTS = 10_000
MAX_SEEDS = 10_000
MAX_STEPS = 1000
MAX_SEED_VALUE = 2**63 - 1
DEFAULT_STRENGTH = 0.75  # A1111's denoising strength
# Video VAEs compress time by this factor and keep the first frame: a video has k * step + 1 frames.
FRAME_STEP: dict[str, int] = {"ltxv": 8, "wan21": 4, "wan22": 4, "hunyuanvideo15": 4, "hunyuanvideo15_i2v": 4,
                             "wan21_i2v": 4, "wan22_i2v": 4}
JOB_FIELDS = {"model", "prompts", "seeds", "seed", "steps", "width", "height", "guidance", "sampler",
              "negative_prompt", "priority", "owner", "frames", "loras", "init_image", "strength"}
# Width and height multiples each family's diffusers pipeline requires (its `check_inputs`): the VAE's
# spatial factor, times 2 where latents are packed in 2x2 patches (Flux) or the transformer's patch.
SIZE_MULTIPLE: dict[str, int] = {"sd15": 8, "sdxl": 8, "sdxl_refiner": 8, "flux": 16, "ltxv": 32, "wan21": 16,
                                 "wan22": 16, "hunyuanvideo15": 16, "hunyuanvideo15_i2v": 16,
                                 "wan21_i2v": 16, "wan22_i2v": 16}


def _int(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(field, f"must be a whole number from {lo} to {hi}, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidInput(field, f"must be from {lo} to {hi}, got {value}")
    return value


def _size(field: str, value: Any, limit: int, family: str) -> int:
    step = SIZE_MULTIPLE.get(family, 8)
    if isinstance(value, bool) or not isinstance(value, int) or not step <= value <= limit or value % step:
        raise InvalidInput(field, f"must be a multiple of {step} from {step} to {limit} (this model's limit), "
                           f"got {value!r}")
    return value


def _frames(value: Any, family: str, limit: int) -> int:
    step = FRAME_STEP.get(family)
    if step is None:
        return _int("frames", value, 1, limit)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit or (value - 1) % step:
        raise InvalidInput("frames", f"must be {step}k+1 from 1 to {limit} (this model's limit), got {value!r}")
    return value


def _sized_by_image(image: bytes, target: int, family: str, asked: tuple[Any, Any]) -> tuple[int, int]:
    """The size a model that buckets its output by the image's aspect ratio renders; a width or height
    given that differs from it is refused rather than silently replaced."""
    size = init.bucket_size(image, target, SIZE_MULTIPLE[family])
    for field_, given, wanted in zip(("width", "height"), asked, size):
        if given is not None and given != wanted:
            raise InvalidInput(field_, f"must be {wanted} or left out: this model sizes its video from the init "
                               f"image's aspect ratio ({size[0]}x{size[1]} for this image), got {given!r}")
    return size


def make_job(
    *,
    model: str = "demo-tiny",
    prompts: Any,
    seeds: Any = 1,
    seed: Any = 0,
    steps: Any = None,
    width: Any = None,
    height: Any = None,
    guidance: Any = None,
    sampler: Any = None,
    negative_prompt: Any = "",
    priority: Any = 0,
    owner: Any = "local",
    frames: Any = 1,
    loras: Any = None,
    init_image: bytes | None = None,
    strength: Any = None,
) -> JobSpec:
    """Check every field and build the job; `seeds` is how many seeds, counted up from `seed`;
    `loras` is a list of {name, weight} tables (adapters on this PC: `farm.jobs.loras`);
    `init_image` an img2img job's image file bytes (the job keeps their hash), re-noised by `strength`
    (default 0.75, A1111's; `farm.jobs.init_image` has the rules)."""
    if not isinstance(model, str):
        raise InvalidInput("model", f"must be a model name, got {model!r}")
    info = get_model(model)
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise InvalidInput("prompts", f"must be a list of 1 to {MAX_PROMPTS} non-empty prompts")
    if len(prompts) > MAX_PROMPTS:
        raise InvalidInput("prompts", f"must be a list of 1 to {MAX_PROMPTS} prompts, got {len(prompts)}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise InvalidInput(f"prompts[{i}]", "must be a non-empty string")
    n_seeds = _int("seeds", seeds, 1, MAX_SEEDS)
    first = _int("seed", seed, 0, MAX_SEED_VALUE - n_seeds)
    # At least 2: every shard runs as at least two segments, handed over as a checkpoint.
    steps = _int("steps", info.default_steps if steps is None else steps, 2, MAX_STEPS)
    asked = (width, height)
    width = _size("width", info.default_size if width is None else width, info.max_size, info.family)
    height = _size("height", info.default_size if height is None else height, info.max_size, info.family)
    guidance = info.default_guidance if guidance is None else guidance
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
        raise InvalidInput("guidance", f"must be a number from 0 to 50, got {guidance!r}")
    if not 0 <= guidance <= 50:
        raise InvalidInput("guidance", f"must be from 0 to 50, got {guidance}")
    sampler = info.default_sampler if sampler is None else sampler
    if sampler not in info.samplers:
        raise InvalidInput("sampler", f"must be one of {', '.join(info.samplers)} for {model}, got {sampler!r}")
    frames = _frames(frames, info.family, info.max_frames)
    if not isinstance(negative_prompt, str):
        raise InvalidInput("negative_prompt", "must be a string")
    priority = _int("priority", priority, -100, 100)
    if not isinstance(owner, str) or not owner.strip():
        raise InvalidInput("owner", "must be a non-empty string")
    adapters = check_loras(loras, model, info.family)
    digest, strength_, start = "", 1.0, 0
    if init_image is not None:
        init.check_family(info.family, model)
        digest = init.check_image(init_image)
        if info.family in init.I2V_FAMILIES:
            init.check_video_strength(info.family, strength)
        else:
            strength_ = init.check_strength(DEFAULT_STRENGTH if strength is None else strength)
            start = init.first_step(info.family, steps, strength_)
        if info.image_target_size:  # HunyuanVideo-1.5 I2V: the image's aspect ratio sets the size
            width, height = _sized_by_image(init_image, info.image_target_size, info.family, asked)
    elif strength is not None:
        raise InvalidInput("strength", "applies only with an init image (init_image)")
    else:
        init.image_required(info.family, model)
    spec = JobSpec(
        model=model,
        prompts=tuple(prompts),
        seeds=tuple(range(first, first + n_seeds)),
        steps=steps,
        width=width,
        height=height,
        guidance=float(guidance),
        sampler=sampler,
        negative_prompt=negative_prompt,
        priority=priority,
        owner=owner,
        frames=frames,
        loras=adapters,
        init_image=digest,
        strength=strength_,
        first_step=start,
    )
    limits.check_job(spec)  # samples, prompt bytes, pixel-frames
    return spec


def load_job_file(path: Path) -> JobSpec:
    """Read a TOML job file; unknown keys are refused so a typo is not silently ignored."""
    return load_job(path)[0]


@dataclass(frozen=True)
class JobRequest:
    """A job file as `farm submit` sends it to a head: each field checked for form; None (absent) takes
    the model's default on the head, which checks the model, its limits and the adapters."""

    model: str
    prompts: tuple[str, ...]
    seeds: int | None = None
    seed: int | None = None
    steps: int | None = None
    width: int | None = None
    height: int | None = None
    guidance: float | None = None
    sampler: str | None = None
    negative_prompt: str = ""
    priority: int = 0
    owner: str | None = None
    frames: int | None = None
    loras: tuple[tuple[str, float], ...] = ()  # (name, weight)
    strength: float | None = None
    init_image: bytes | None = field(default=None, repr=False)  # the image file's bytes, checked for form


# The largest side and frame count any family takes: the head checks the model's own limits.
MAX_SIDE = max(limit.max_size for limit in LIMITS.values())
MAX_FRAMES = max(limit.max_frames for limit in LIMITS.values())


def _side(field: str, value: Any) -> int:
    """A width or height any family could take: a multiple of 8 (the head checks its model's multiple)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= MAX_SIDE or value % 8:
        raise InvalidInput(field, f"must be a multiple of 8 from 8 to {MAX_SIDE}, got {value!r}")
    return value


def check_request(data: dict[str, Any], init_image: bytes | None = None) -> JobRequest:
    """A job file's fields checked for form only (types, and the ranges that hold for every model);
    `init_image` the bytes of the file its `init_image` names (read by the caller)."""
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidInput("model", f"must be a model name (a built-in name, a diffusers folder or a Hugging Face "
                                    f"id on the head), got {model!r:.80}")
    prompts = data.get("prompts")
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not 1 <= len(prompts) <= MAX_PROMPTS:
        raise InvalidInput("prompts", f"must be a list of 1 to {MAX_PROMPTS} non-empty prompts")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise InvalidInput(f"prompts[{i}]", "must be a non-empty string")

    def given(name: str, check: Any) -> Any:
        return check(data[name]) if name in data else None

    seeds = given("seeds", lambda v: _int("seeds", v, 1, MAX_SEEDS))
    seed = given("seed", lambda v: _int("seed", v, 0, MAX_SEED_VALUE - (seeds or 1)))
    steps = given("steps", lambda v: _int("steps", v, 2, MAX_STEPS))
    width = given("width", lambda v: _side("width", v))
    height = given("height", lambda v: _side("height", v))
    guidance = data.get("guidance")
    if guidance is not None and (isinstance(guidance, bool) or not isinstance(guidance, (int, float))
                                 or not math.isfinite(guidance) or not 0 <= guidance <= 50):
        raise InvalidInput("guidance", f"must be a number from 0 to 50, got {guidance!r}")
    sampler = data.get("sampler")
    if sampler is not None and (not isinstance(sampler, str) or not sampler):
        raise InvalidInput("sampler", f"must be a sampler's name, got {sampler!r:.80}")
    negative = data.get("negative_prompt", "")
    if not isinstance(negative, str):
        raise InvalidInput("negative_prompt", "must be a string")
    owner = data.get("owner")
    if owner is not None and (not isinstance(owner, str) or not owner.strip()):
        raise InvalidInput("owner", "must be a non-empty string")
    return JobRequest(model=model, prompts=tuple(prompts), seeds=seeds, seed=seed, steps=steps, width=width,
                      height=height, guidance=None if guidance is None else float(guidance), sampler=sampler,
                      negative_prompt=negative, priority=_int("priority", data.get("priority", 0), -100, 100),
                      owner=owner, frames=given("frames", lambda v: _int("frames", v, 1, MAX_FRAMES)),
                      loras=check_lora_form(data.get("loras")), strength=_strength(data.get("strength"), init_image),
                      init_image=init_image)


def _strength(value: Any, image: bytes | None) -> float | None:
    """The img2img strength, checked for form (the head checks it against the model's steps)."""
    if value is None:
        return None
    if image is None:
        raise InvalidInput("strength", "applies only with an init image (init_image)")
    return init.check_strength(value)


def load_job_request(path: Path, init_image: Path | None = None) -> JobRequest:
    """A TOML job file checked for form only, for `farm submit` (see `check_request`); its
    `init_image` path is relative to the file's folder, and `init_image` (`--init-image`) overrides it."""
    data = _read_job_file(path)
    given = data.pop("init_image", None)
    image = None
    if init_image is not None:
        image = init.read_image(init_image)
    elif given is not None:
        image = init.read_image(path.parent / given if isinstance(given, str) else given)
    return check_request(data, image)


def _read_job_file(path: Path) -> dict[str, Any]:
    """A TOML job file's table; unknown keys and a missing `prompts` are refused."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput("job file", f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput("job file", f"cannot read {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput("job file", f"{path} is not valid TOML: {e}") from None
    unknown = sorted(set(data) - JOB_FIELDS)
    if unknown:
        raise InvalidInput(unknown[0], f"unknown field; allowed fields: {', '.join(sorted(JOB_FIELDS))}")
    if "prompts" not in data:
        raise InvalidInput("prompts", "is required: a list of 1 to 10000 prompts")
    return data


def load_job(path: Path) -> tuple[JobSpec, bytes | None]:
    """A TOML job file's job and its init image's bytes (None without one): `init_image` is a path,
    relative to the job file's folder."""
    data = _read_job_file(path)
    image = None
    if "init_image" in data:
        given = data.pop("init_image")
        image = init.read_image(path.parent / given if isinstance(given, str) else given)
    return make_job(**data, init_image=image), image
