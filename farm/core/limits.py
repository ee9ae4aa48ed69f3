"""Limits that keep one job or one user from taking the farm from everyone else (pure).

A job's size is capped at the edge (`farm.jobs.jobspec.make_job` calls `check_job`): its samples,
the bytes of its prompts (a job's text travels in every listing and every segment) and its
pixel-frames (what its outputs weigh). A user's unfinished jobs are capped when they submit
(`check_queue`, the cap from `Settings`), so 300 submits in a row cannot bury everyone else's.
Every refusal is one line naming the field and the allowed range.
"""

from __future__ import annotations

from farm.contracts.domain import JobSpec
from farm.contracts.errors import InvalidInput, LimitReached
from farm.core.state import FarmState
from farm.core.transitions import ENDED

MAX_SAMPLES = 10_000  # prompts x seeds
MAX_PROMPT_BYTES = 4096  # one prompt or the negative prompt, in UTF-8 (far past any text encoder's window)
MAX_JOB_TEXT_BYTES = 1 << 20  # all of a job's prompts together: a job always fits in one gRPC message
MAX_PIXEL_FRAMES = 1 << 33  # samples x width x height x frames: 24 GiB of RGB outputs


def check_job(spec: JobSpec) -> None:
    """Raise InvalidInput naming the first field over its cap."""
    samples = len(spec.prompts) * len(spec.seeds)
    if samples > MAX_SAMPLES:
        raise InvalidInput("samples", f"prompts x seeds must be from 1 to {MAX_SAMPLES}, got {samples}")
    total = 0
    for field, text in (*((f"prompts[{i}]", p) for i, p in enumerate(spec.prompts)),
                        ("negative_prompt", spec.negative_prompt)):
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_PROMPT_BYTES:
            raise InvalidInput(field, f"must be at most {MAX_PROMPT_BYTES} bytes of UTF-8, got {size}")
        total += size
    if total > MAX_JOB_TEXT_BYTES:
        raise InvalidInput("prompts", f"must total at most {MAX_JOB_TEXT_BYTES} bytes of UTF-8, got {total}")
    pixels = samples * spec.width * spec.height * spec.frames
    if pixels > MAX_PIXEL_FRAMES:
        raise InvalidInput("pixel-frames", f"samples x width x height x frames must be at most {MAX_PIXEL_FRAMES}, "
                           f"got {pixels} ({samples} x {spec.width} x {spec.height} x {spec.frames})")


def unfinished(state: FarmState, owner: str) -> int:
    """How many of `owner`'s jobs are queued, running or paused."""
    return sum(1 for job in state.jobs.values() if job.spec.owner == owner and job.status not in ENDED)


def check_queue(state: FarmState, owner: str) -> None:
    """Raise LimitReached when `owner` already has the most unfinished jobs a user may have."""
    cap = state.settings.max_unfinished_per_user
    if cap is not None and unfinished(state, owner) >= cap:
        raise LimitReached(f"queue: {owner} has {cap} unfinished jobs (allowed: 0 to {cap} per user); "
                           "wait for one to end, or cancel one")
