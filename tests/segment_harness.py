"""Shared by the per-family segment tests: tiny pipelines saved and loaded back, and a run cut at
one step boundary through a msgpack checkpoint into an engine that only ever resumes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from farm.contracts.domain import JobSpec
from farm.jobs.jobspec import make_job
from farm.pipelines import schedulers
from farm.pipelines.engine import Engine
from farm.pipelines.families import get_family
from farm.wire import checkpoint_codec as wire


@dataclass(frozen=True)
class Case:
    family: str
    sampler: str
    job_fields: dict


@dataclass
class Engines:
    """A family's tiny pipeline saved to a folder and loaded back with from_pretrained, by two
    engines: `first` encodes and runs the first segment, `middle` only ever resumes checkpoints."""

    folder: Path
    first: Engine
    middle: Engine


_ENGINES: dict[str, Engines] = {}


def engines_for(family: str, base: Path) -> Engines:
    """Built, saved and loaded once per test session and family (building costs seconds)."""
    if family not in _ENGINES:
        path = base / f"tiny-{family}"
        get_family(family).build_tiny().save_pretrained(path)
        make = lambda: Engine(get_family(family), path, "test", torch.device("cpu"))  # noqa: E731
        _ENGINES[family] = Engines(path, make(), make())
    return _ENGINES[family]


def job_for(case: Case) -> JobSpec:
    fields = {"prompts": ["a red circle", "a blue square"], "seeds": 1, "steps": 4, "sampler": case.sampler,
              **case.job_fields}
    return make_job(**fields)


def run_cut(e: Engines, job: JobSpec, cut: int | None) -> torch.Tensor:
    first, second = e.first, e.middle
    live = first.encode(job, job.samples())
    total = schedulers.evaluations(job.sampler, job.steps)
    if cut is None:
        return first.denoise(live, total).latents
    live = first.denoise(live, cut)
    payload = wire.encode(first.to_checkpoint(live))
    resumed = second.from_checkpoint(wire.decode(payload), job)
    out = second.denoise(resumed, total).latents
    assert second.loaded_components() == set(second.family.stages["denoise"]), \
        "a middle segment loaded more than its denoiser"
    return out


def assert_cuts_equal_uncut(e: Engines, job: JobSpec) -> None:
    """Cut at every whole-step boundary: each resumed run must equal the uncut run bit for bit."""
    uncut = run_cut(e, job, None)
    for cut in schedulers.whole_step_ends(job.sampler, job.steps)[1:-1]:
        assert torch.equal(run_cut(e, job, cut), uncut), f"cut at evaluation {cut} changed the latents"


def full_run(engine: Engine, job: JobSpec) -> list:
    """The engine's uncut run of the whole job, decoded: what `engine.plain` must equal."""
    live = engine.encode(job, job.samples())
    live = engine.denoise(live, schedulers.evaluations(job.sampler, job.steps))
    return engine.decode(live)
