"""The built-in demo job: prompts a new user can check by eye in the PNGs it writes."""

from __future__ import annotations

from farm.contracts.domain import JobSpec
from farm.jobs.jobspec import make_job

DEMO_PROMPTS = (
    "a red circle on a blue background",
    "a yellow square on a green background",
    "a white triangle on a black background",
    "a blue circle on a yellow background",
)


def demo_job(steps: int = 20, seeds: int = 3) -> JobSpec:
    """4 prompts x 3 seeds on `demo-shapes`, the toy model trained to draw such prompts: 12 samples,
    enough that every node gets a shard."""
    return make_job(model="demo-shapes", prompts=list(DEMO_PROMPTS), seeds=seeds, steps=steps, sampler="euler_a")
