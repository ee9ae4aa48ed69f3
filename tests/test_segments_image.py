"""SDXL (alone and with its refiner as a second stage) and Flux.1 as resumable segments: for each
sampler, a run cut at any step boundary (through a msgpack checkpoint, into a fresh engine that loads
only the denoisers it runs) gives exactly the uncut latents, and the uncut run decodes to the pixels
of the plain diffusers call. Tiny pipelines, 32x32 (Flux 64x32), 4 steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_harness import Case, assert_cuts_equal_uncut, full_run, job_for, run_cut

from farm.contracts.errors import InvalidInput
from farm.jobs.catalog import FAMILY_SAMPLERS, get_model
from farm.jobs.jobspec import make_job
from farm.pipelines.engine import Engine
from farm.pipelines.families import get_family
from farm.pipelines.families.sdxl import refiner_from
from farm.pipelines.loader import builtin_folder
from farm.wire import checkpoint_codec as wire

MODELS = {"sdxl": "tiny-sdxl", "sdxl_refiner": "tiny-sdxl-refiner", "flux": "tiny-flux"}
# Flux at 64x32: 512 image tokens, so the schedule's resolution-dependent shift is not its base value.
SIZES = {"sdxl": (32, 32), "sdxl_refiner": (32, 32), "flux": (64, 32)}
CASES = [Case(family, s, {"model": model, "width": SIZES[family][0], "height": SIZES[family][1]})
         for family, model in MODELS.items() for s in FAMILY_SAMPLERS[family]]


def ids(case: Case) -> str:
    return f"{case.family}-{case.sampler}"


@pytest.mark.parametrize("case", [c for c in CASES if c.family != "sdxl_refiner"], ids=ids)
def test_cut_at_every_step_boundary_equals_uncut(case: Case, engines) -> None:
    assert_cuts_equal_uncut(engines(case.family), job_for(case))


@pytest.mark.parametrize("case", [c for c in CASES if c.family == "sdxl_refiner"], ids=ids)
def test_refiner_cut_at_every_step_boundary_equals_uncut(case: Case, engines) -> None:
    """Cut before, at and after the hand-over to the refiner: a fresh engine resumes each cut and
    loads the base UNet only while iterations before the hand-over remain."""
    e = engines(case.family)
    job = job_for(case)
    uncut = run_cut(e, job, None)
    start = refiner_from(0.5, e.first.encode(job, job.samples()).scheduler)
    assert 0 < start < job.steps, "the tiny refiner must take over inside the run"
    for cut in range(1, job.steps):
        middle = Engine(e.first.family, e.folder, "test", torch.device("cpu"))
        live = e.first.denoise(e.first.encode(job, job.samples()), cut)
        resumed = middle.from_checkpoint(wire.decode(wire.encode(e.first.to_checkpoint(live))), job)
        assert torch.equal(middle.denoise(resumed, job.steps).latents, uncut), f"cut at {cut} changed the latents"
        assert middle.loaded_components() == ({"unet", "refiner"} if cut < start else {"refiner"})


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_engine_equals_plain_pipeline_call(case: Case, engines) -> None:
    job = job_for(case)
    engine = engines(case.family).first
    ours, theirs = full_run(engine, job), engine.plain(job, job.samples())
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        assert a.shape == (job.height, job.width, 3) and a.std() > 1  # a picture, not a flat field
        assert np.array_equal(a, b)


def test_the_refiner_changes_the_result(engines) -> None:
    """The refined model's run is not the base's: its last iterations run another UNet."""
    case = Case("sdxl_refiner", "euler", {"model": "tiny-sdxl-refiner", "width": 32, "height": 32})
    job = job_for(case)
    refined = engines("sdxl_refiner").first
    live = refined.denoise(refined.encode(job, job.samples()), job.steps)
    base, base_only = refined.pipe("denoise"), refined.encode(job, job.samples())
    base.scheduler = base_only.scheduler
    for i in range(job.steps):  # the same run on the base UNet throughout
        base_only.latents = get_family("sdxl").step(base, base_only, i)
    assert not torch.equal(live.latents, base_only.latents)


def test_refiner_takes_first_order_samplers_only() -> None:
    with pytest.raises(InvalidInput, match="sampler"):
        make_job(model="tiny-sdxl-refiner", prompts=["a"], sampler="heun")


def test_flux_previews_unpack_the_latent_patches(engines) -> None:
    job = job_for(Case("flux", "flow_euler", {"model": "tiny-flux", "width": 32, "height": 64}))
    engine = engines("flux").first
    live = engine.encode(job, job.samples())
    assert live.latents.shape == (2, 16 * 32, 4)  # 2x2 patches of the 1-channel 32x64 latents
    assert engine.family.spatial_latents(live).shape == (2, 1, 64, 32)


@pytest.mark.parametrize("model", list(MODELS.values()))
def test_builtin_model_saves_and_loads_back_with_from_pretrained(model: str, tmp_path) -> None:
    """The path real weights take: a folder, loaded with the family's pipeline class's from_pretrained."""
    family = get_family(get_model(model).family)
    loaded = family.pipeline_class.from_pretrained(str(builtin_folder(model, tmp_path)))
    built = family.build_tiny()
    assert type(loaded) is type(built)
    assert {k: v for k, v in loaded.config.items() if k != "_name_or_path"} == dict(built.config)
    for name, module in built.components.items():
        if isinstance(module, torch.nn.Module):
            theirs = getattr(loaded, name).state_dict()
            assert all(torch.equal(t, theirs[k]) for k, t in module.state_dict().items()), name
