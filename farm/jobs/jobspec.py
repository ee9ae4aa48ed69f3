"""Validation of jobs at the edge (pure): a bad field is refused before anything is queued.

Each check names the field and the allowed range, because the message is all a user sees.
`load_job_file` reads the same fields from TOML, so `farm run JOB.toml` and `farm render` agree.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

from farm.contracts.domain import JobSpec
from farm.contracts.errors import InvalidInput
from farm.jobs.catalog import get_model

MAX_PROMPTS = 10_000
MAX_SEEDS = 10_000
MAX_STEPS = 1000
MAX_SEED_VALUE = 2**63 - 1
# Video VAEs compress time by this factor and keep the first frame: a video has k * step + 1 frames.
FRAME_STEP: dict[str, int] = {"ltxv": 8, "wan21": 4, "wan22": 4, "hunyuanvideo15": 4}
JOB_FIELDS = {"model", "prompts", "seeds", "seed", "steps", "width", "height", "guidance", "sampler",
              "negative_prompt", "priority", "owner", "frames"}


def _int(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(field, f"must be a whole number from {lo} to {hi}, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidInput(field, f"must be from {lo} to {hi}, got {value}")
    return value


def _size(field: str, value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= limit or value % 8:
        raise InvalidInput(field, f"must be a multiple of 8 from 8 to {limit} (this model's limit), got {value!r}")
    return value


def _frames(value: Any, family: str, limit: int) -> int:
    step = FRAME_STEP.get(family)
    if step is None:
        return _int("frames", value, 1, limit)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit or (value - 1) % step:
        raise InvalidInput("frames", f"must be {step}k+1 from 1 to {limit} (this model's limit), got {value!r}")
    return value


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
) -> JobSpec:
    """Check every field and build the job; `seeds` is how many seeds, counted up from `seed`."""
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
    width = _size("width", info.default_size if width is None else width, info.max_size)
    height = _size("height", info.default_size if height is None else height, info.max_size)
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
    return JobSpec(
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
    )


def load_job_file(path: Path) -> JobSpec:
    """Read a TOML job file; unknown keys are refused so a typo is not silently ignored."""
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
    return make_job(**data)
