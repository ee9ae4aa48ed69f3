"""Image-to-image (SD 1.5, SDXL, Flux.1) as resumable segments: for every sampler, a run cut at every
step boundary (through a msgpack checkpoint, into a fresh engine that loads only its denoiser) gives
exactly the uncut latents, and the uncut run decodes to the pixels of the plain diffusers img2img
pipeline call (`StableDiffusionImg2ImgPipeline`, `StableDiffusionXLImg2ImgPipeline`,
`FluxImg2ImgPipeline`) built from the same tiny components. The init image is 48x40, so it is
resized to the job's size on the way, as A1111 does; 5 steps at strength 0.7 run 3 on SD and SDXL,
4 on Flux (diffusers rounds differently there)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from init_images import circle_png
from PIL import Image

from farm.contracts.domain import JobSpec
from farm.contracts.errors import CheckpointError, InvalidInput
from farm.jobs.catalog import FAMILY_SAMPLERS
from farm.jobs.jobspec import make_job
from farm.pipelines import schedulers
from farm.wire import checkpoint_codec as wire

MODELS = {"sd15": "demo-tiny", "sdxl": "tiny-sdxl", "flux": "tiny-flux"}
SIZES = {"sd15": (32, 32), "sdxl": (32, 32), "flux": (64, 32)}
CASES = [(family, sampler) for family in MODELS for sampler in FAMILY_SAMPLERS[family]]




IMAGE = circle_png()


def job_for(family: str, sampler: str, strength: float = 0.7, steps: int = 5) -> JobSpec:
    width, height = SIZES[family]
    return make_job(model=MODELS[family], prompts=["a red square", "a blue square"], seeds=1, steps=steps,
                    sampler=sampler, width=width, height=height, init_image=IMAGE, strength=strength)


def run(e, job: JobSpec, cut: int | None) -> torch.Tensor:
    """The shard's run, uncut or cut at evaluation `cut` and resumed by an engine that never encodes."""
    total = schedulers.evaluations(job.sampler, job.run_steps)
    live = e.first.encode(job, job.samples(), IMAGE)
    if cut is None:
        return e.first.denoise(live, total).latents
    live = e.first.denoise(live, cut)
    resumed = e.middle.from_checkpoint(wire.decode(wire.encode(e.first.to_checkpoint(live))), job)
    out = e.middle.denoise(resumed, total).latents
    assert e.middle.loaded_components() == set(e.middle.family.stages["denoise"]), \
        "a middle segment loaded more than its denoiser"
    return out


def ids(case: tuple[str, str]) -> str:
    return "-".join(case)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_cut_at_every_step_boundary_equals_uncut(case: tuple[str, str], engines) -> None:
    family, sampler = case
    e, job = engines(family), job_for(family, sampler)
    uncut = run(e, job, None)
    for cut in schedulers.whole_step_ends(job.sampler, job.run_steps)[1:-1]:
        assert torch.equal(run(e, job, cut), uncut), f"cut at evaluation {cut} changed the latents"


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_uncut_run_equals_plain_img2img_pipeline_call(case: tuple[str, str], engines) -> None:
    family, sampler = case
    engine, job = engines(family).first, job_for(family, sampler)
    live = engine.encode(job, job.samples(), IMAGE)
    ours = engine.decode(engine.denoise(live, schedulers.evaluations(job.sampler, job.run_steps)))
    theirs = engine.plain(job, job.samples(), IMAGE)
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        assert a.shape == (job.height, job.width, 3) and a.std() > 1
        assert np.array_equal(a, b)


@pytest.mark.parametrize(("family", "run_steps"), [("sd15", 3), ("sdxl", 3), ("flux", 4)])
def test_segments_cover_only_the_steps_that_run(family: str, run_steps: int, engines) -> None:
    """5 steps at strength 0.7: the shard's step range is the steps diffusers runs, no more."""
    job = job_for(family, FAMILY_SAMPLERS[family][0])
    assert job.run_steps == run_steps and job.first_step == 5 - run_steps
    engine = engines(family).first
    live = engine.encode(job, job.samples(), IMAGE)
    begun = live.scheduler.begin_index if hasattr(live.scheduler, "begin_index") else None
    assert begun in (None, job.first_step * live.scheduler.order)


def test_strength_keeps_the_image_and_one_re_noises_it(engines) -> None:
    """A low strength keeps the init image's colours; at 1 the result no longer depends on the image."""
    engine = engines("sd15").first

    def render(strength: float, image: bytes) -> np.ndarray:
        job = make_job(model="demo-tiny", prompts=["a red square"], steps=10, sampler="euler", width=32, height=32,
                       init_image=image, strength=strength)
        live = engine.encode(job, job.samples(), image)
        return engine.decode(engine.denoise(live, job.run_steps))[0].astype(float)

    other = circle_png(40, 40)
    close = np.abs(render(0.2, IMAGE) - render(0.2, other)).mean()
    assert np.abs(render(1.0, IMAGE) - render(1.0, other)).mean() < close


def test_the_first_segment_needs_its_image(engines) -> None:
    engine = engines("sd15").first
    job = job_for("sd15", "euler")
    with pytest.raises(CheckpointError, match="init image"):
        engine.encode(job, job.samples(), None)


def test_only_the_first_segment_carries_the_image(tmp_path) -> None:
    """The head stores the image once by hash, sends it only with each shard's first segment (the
    one that encodes), counts segments in the steps that run, and keeps the image while the job may
    still need it."""
    from test_coordinator import MemorySink, ScriptedExecutor

    from farm.runtime.blobs import DiskBlobs
    from farm.runtime.coordinator import Coordinator
    from node.simulated import simulated_nodes

    executor = ScriptedExecutor(simulated_nodes())
    c = Coordinator(executor, MemorySink(), max_segment_steps=1)
    c.blobs = DiskBlobs(tmp_path / "blobs")
    job = job_for("sd15", "euler")
    job_id = c.submit(job, init_image=IMAGE)
    assert c.state.blobs() >= {job.init_image} and (tmp_path / "blobs" / job.init_image).read_bytes() == IMAGE
    assert c.finish(job_id).status == "done"
    tasks = [t for _, t in executor.tasks]
    assert {t.index for t in tasks} == set(range(job.run_steps)) and max(t.end for t in tasks) == job.run_steps
    assert all((t.init_image == IMAGE) == (t.checkpoint is None) for t in tasks)
    assert all(t.init_image is None for t in tasks if t.index > 0)
    assert job.init_image not in c.state.blobs()  # done: the image may be collected


def test_a_restarted_head_still_sends_the_image_to_a_first_segment(tmp_path) -> None:
    """The image lives in the head's store beside the queue: a head that dies before any segment ran
    gives the first segments the same bytes after its restart."""
    from test_coordinator import MemorySink, ScriptedExecutor

    from farm.runtime.coordinator import Coordinator
    from farm.runtime.store import Store
    from node.simulated import simulated_nodes

    job = job_for("sd15", "euler")
    first = Coordinator(ScriptedExecutor(simulated_nodes()), MemorySink(), store=Store(tmp_path), max_segment_steps=1)
    job_id = first.submit(job, init_image=IMAGE)
    del first  # dies before its first tick
    executor = ScriptedExecutor(simulated_nodes())
    second = Coordinator(executor, MemorySink(), store=Store(tmp_path), max_segment_steps=1)
    assert second.finish(job_id).status == "done"
    firsts = [t.init_image for _, t in executor.tasks if t.index == 0]
    assert firsts and all(image == IMAGE for image in firsts)


def test_the_head_refuses_bytes_that_are_not_the_jobs_image() -> None:
    from test_coordinator import MemorySink, ScriptedExecutor

    from farm.runtime.coordinator import Coordinator
    from node.simulated import simulated_nodes

    c = Coordinator(ScriptedExecutor(simulated_nodes()), MemorySink())
    job = job_for("sd15", "euler")
    for wrong in (None, circle_png(40, 40)):
        with pytest.raises(InvalidInput, match="init_image"):
            c.submit(job, init_image=wrong)
    assert not c.state.jobs


# ----- the demo: demo-shapes through the farm, judged by its pixels ---------------------------------


def render_img2img_on_farm(executor: object, out, image: bytes, strength: float) -> list:
    """A demo-shapes img2img job ("a red square on a blue background", 2 seeds, 20 steps) on the embedded
    farm, cut into segments of at most 4 steps that move between nodes; the PNGs it wrote."""
    from waiting import ready

    from farm.runtime.coordinator import Coordinator
    from farm.runtime.outputs import PngWriter

    job = make_job(model="demo-shapes", prompts=["a red square on a blue background"], seeds=2, steps=20,
                   init_image=image, strength=strength)
    coordinator = Coordinator(executor, PngWriter(out), max_segment_steps=4)
    ready(coordinator)
    view = coordinator.finish(coordinator.submit(job, init_image=image))
    assert view.status == "done", view.error
    return sorted(out.rglob("*.png"))


def readings(outputs: list, strength: float) -> list[tuple[str | None, str | None, str]]:
    """What the pixel judge reads in each output, checked against the prompt its provenance names."""
    from farm.demo_model.evaluate import judge
    from farm.runtime.outputs import read_provenance

    images, prompts, seeds = [], [], []
    for path in outputs:
        meta = read_provenance(path)
        assert meta["strength"] == strength and meta["init_image"]
        images.append(np.asarray(Image.open(path).convert("RGB")))
        prompts.append(meta["prompt"])
        seeds.append(meta["seed"])
    return [(v.reading.shape, v.reading.colour, v.reading.background) for v in judge(prompts, seeds, images)]


@pytest.mark.slow
def test_demo_turns_the_red_circle_into_a_red_square(embedded, tmp_path) -> None:
    """The README's demo: docs/red-circle-on-blue.png at strength 0.7 (14 of 20 steps) becomes the
    prompt's red square on blue for every seed. And the image is what the farm denoises from: a red
    circle on yellow at strength 0.2 (4 steps) keeps its warm background against the prompt's blue."""
    from pathlib import Path

    from farm.demo_model.data import Scene, render

    demo = (Path(__file__).parent.parent / "docs" / "red-circle-on-blue.png").read_bytes()
    assert readings(render_img2img_on_farm(embedded, tmp_path / "demo", demo, 0.7), 0.7) == \
        [("square", "red", "blue")] * 2
    out = io.BytesIO()
    Image.fromarray(render(Scene("circle", "red", "yellow", 32, 32, 17))).save(out, format="PNG")
    kept = readings(render_img2img_on_farm(embedded, tmp_path / "kept", out.getvalue(), 0.2), 0.2)
    assert len(kept) == 2 and all(background != "blue" for _, _, background in kept), kept


# ----- A1111's /sdapi/v1/img2img on the head ----------------------------------------------------------


@pytest.fixture(scope="module")
def served(embedded, tmp_path_factory):
    from http_harness import Served

    s = Served(embedded, tmp_path_factory.mktemp("img2img-renders"))
    yield s
    s.stop()


@pytest.mark.slow
def test_a1111_img2img_with_the_webuiapi_client(served) -> None:
    """The real A1111 client's img2img: one base64 init image and denoising_strength make one job that
    holds the image's hash; the answer is the farm's PNGs, which name the strength as A1111 does."""
    from pathlib import Path

    from farm.jobs.init_image import check_image

    demo = (Path(__file__).parent.parent / "docs" / "red-circle-on-blue.png").read_bytes()
    r = served.api.img2img(images=[Image.open(io.BytesIO(demo))], prompt="a red square on a blue background",
                           seed=3, steps=10, cfg_scale=3.0, width=64, height=64, sampler_name="Euler a",
                           denoising_strength=0.7, batch_size=2)
    info = r.info
    view = served.coordinator.get_job(info["job_id"])
    assert view.status == "done" and view.spec.strength == 0.7 and view.spec.run_steps == 7
    # webuiapi sends the image re-encoded as PNG: the job is pinned to the bytes the head received.
    assert view.spec.init_image and len(view.spec.init_image) == 64
    assert info["denoising_strength"] == 0.7 and "Denoising strength: 0.7" in info["infotexts"][0]
    assert r.parameters["init_images"] is None and len(r.images) == 2
    assert check_image(demo)  # the demo file itself is a valid init image


@pytest.mark.parametrize(("body", "field"), [
    ({"init_images": []}, "init_images"),
    ({"init_images": ["not base64!"]}, "init_images"),
    ({"init_images": [base64.b64encode(b"no image").decode()]}, "init_images"),
    ({"denoising_strength": 0}, "denoising_strength"),
    ({"denoising_strength": 1.5}, "denoising_strength"),
    ({"width": 40, "override_settings": {"sd_model_checkpoint": "tiny-flux"}}, "width"),
])
def test_bad_img2img_values_are_422_naming_the_a1111_field(served, body: dict, field: str) -> None:
    import requests

    image = base64.b64encode(IMAGE).decode()
    r = requests.post(f"{served.http.url}/sdapi/v1/img2img",
                      json={"prompt": "a red square", "init_images": [image], **body}, timeout=30)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert ".".join(detail["loc"][1:]) == field and detail["msg"]
