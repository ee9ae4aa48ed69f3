"""The video families as segments: for each family and sampler, a run cut at any step boundary gives
exactly the uncut latents, and the engine's whole run gives exactly the frames of the plain
diffusers pipeline call. Wan 2.2's experts are two stages: a node that resumes after the boundary
loads only the low-noise expert."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_harness import Case, Engines, assert_cuts_equal_uncut, full_run, job_for

from farm.contracts.domain import JobSpec
from farm.contracts.errors import InvalidInput
from farm.jobs.catalog import get_model
from farm.jobs.jobspec import make_job
from farm.pipelines import schedulers
from farm.pipelines.engine import Engine
from farm.pipelines.families import get_family
from farm.wire import checkpoint_codec as wire

MODELS = {"ltxv": "tiny-ltx", "wan21": "tiny-wan21", "wan22": "tiny-wan22", "hunyuanvideo15": "tiny-hunyuan15"}
# HunyuanVideo-1.5 attends over 1256 text tokens per step: three steps keep its tests to seconds.
STEPS = {"hunyuanvideo15": 3}
CASES = [
    Case(family, sampler, {"model": model, "frames": 9, "width": 32, "height": 32, "steps": STEPS.get(family, 4)})
    for family, model in MODELS.items()
    for sampler in get_model(model).samplers
]
ONE_DENOISER = [c for c in CASES if c.family != "wan22"]
WAN22 = [c for c in CASES if c.family == "wan22"]


def case_id(case: Case) -> str:
    return f"{case.family}-{case.sampler}"


@pytest.mark.parametrize("case", ONE_DENOISER, ids=case_id)
def test_cut_at_every_step_boundary_equals_uncut(case: Case, engines) -> None:
    assert_cuts_equal_uncut(engines(case.family), job_for(case))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_engine_equals_plain_pipeline_call(case: Case, engines) -> None:
    job = job_for(case)
    engine = engines(case.family).first
    ours, theirs = full_run(engine, job), engine.plain(job, job.samples())
    assert len(ours) == len(theirs) == len(job.samples())
    for a, b in zip(ours, theirs):
        assert a.shape == (job.frames, job.height, job.width, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b)


def experts_for(job: JobSpec, e: Engines, start: int) -> set[str]:
    """The experts Wan 2.2's own rule picks for iterations [start, end): t >= boundary is high noise."""
    live = e.first.encode(job, job.samples())
    boundary = e.first.index["boundary_ratio"] * live.scheduler.config.num_train_timesteps
    return {"transformer" if t >= boundary else "transformer_2" for t in live.scheduler.timesteps[start:]}


@pytest.mark.parametrize("case", WAN22, ids=case_id)
def test_wan22_cut_equals_uncut_and_resumes_with_only_the_experts_it_runs(case: Case, engines) -> None:
    e, job = engines(case.family), job_for(case)
    total = schedulers.evaluations(job.sampler, job.steps)
    uncut = e.first.denoise(e.first.encode(job, job.samples()), total).latents
    low_only = 0
    for cut in range(1, total):
        payload = wire.encode(e.first.to_checkpoint(e.first.denoise(e.first.encode(job, job.samples()), cut)))
        node = Engine(get_family("wan22"), e.folder, "test", torch.device("cpu"))  # a node that holds nothing yet
        resumed = node.denoise(node.from_checkpoint(wire.decode(payload), job), total)
        assert torch.equal(resumed.latents, uncut), f"cut at {cut} changed the latents"
        assert node.loaded_components() == experts_for(job, e, cut)
        low_only += node.loaded_components() == {"transformer_2"}
    assert low_only, "some cut should fall after the expert boundary"
    assert {"transformer", "transformer_2"} <= e.first.loaded_components(), "the uncut run should use both experts"


@pytest.mark.parametrize(("family", "scale"), [("ltxv", 8), ("wan21", 8), ("wan22", 8), ("hunyuanvideo15", 4)])
def test_preview_latents_are_one_frame_per_sample(family: str, scale: int, engines) -> None:
    """LTX's latents are a token sequence: the preview needs them unpacked to a (B, C, H, W) frame."""
    job = job_for(Case(family, get_model(MODELS[family]).default_sampler, {"model": MODELS[family], "frames": 9}))
    live = engines(family).first.encode(job, job.samples())
    latents = get_family(family).spatial_latents(live)
    assert latents.shape[0] == len(job.samples()) and latents.shape[2:] == (job.height // scale, job.width // scale)


@pytest.mark.parametrize(("model", "good", "bad"), [
    ("tiny-ltx", (1, 9, 17, 33), (2, 5, 10, 41)),
    ("tiny-wan21", (1, 5, 9, 33), (2, 6, 11, 37)),
    ("tiny-hunyuan15", (1, 5, 13), (3, 8, 12)),
])
def test_frame_counts_follow_the_vae_time_compression(model: str, good: tuple[int, ...], bad: tuple[int, ...]) -> None:
    for frames in good:
        assert make_job(model=model, prompts=["a"], frames=frames).frames == frames
    for frames in bad:
        with pytest.raises(InvalidInput, match="frames"):
            make_job(model=model, prompts=["a"], frames=frames)
