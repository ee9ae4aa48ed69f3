"""The sampling engine: for each family and sampler, a run cut at any step boundary (through a
msgpack checkpoint, into a fresh engine that loads only the denoiser) gives exactly the latents of
the uncut run; and the uncut run equals the plain diffusers pipeline call."""

from __future__ import annotations

import numpy as np
import pytest
from segment_harness import Case, assert_cuts_equal_uncut, full_run, job_for

from farm.contracts.errors import InvalidInput
from farm.jobs.jobspec import make_job
from farm.pipelines import schedulers

CASES = [Case("sd15", s, {}) for s in ("ddim", "euler", "euler_a", "dpmpp_2m", "unipc", "heun", "dpm2")]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.family}-{c.sampler}")
def test_cut_at_every_step_boundary_equals_uncut(case: Case, engines) -> None:
    assert_cuts_equal_uncut(engines(case.family), job_for(case))


@pytest.mark.parametrize("case", [c for c in CASES if c.sampler in ("euler_a", "dpmpp_2m")], ids=lambda c: c.family)
def test_engine_equals_plain_pipeline_call(case: Case, engines) -> None:
    job = job_for(case)
    engine = engines(case.family).first
    for ours, theirs in zip(full_run(engine, job), engine.plain(job, job.samples())):
        assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("sampler", ["heun", "dpm2"])
def test_second_order_samplers_refuse_a_mid_step_cut(sampler: str, engines) -> None:
    job = make_job(prompts=["a"], steps=4, sampler=sampler)
    engine = engines("sd15").first
    live = engine.encode(job, job.samples())
    with pytest.raises(InvalidInput, match="second-order: cut only where a whole step ends"):
        engine.denoise(live, 1)
    assert schedulers.whole_step_ends(sampler, 4) == [0, 2, 4, 6, 7]
