"""Wan 2.1 I2V and Wan 2.2 I2V A14B (`WanImageToVideoPipeline`) as resumable segments: for each sampler
a run cut at every step boundary (through a msgpack checkpoint, into an engine that is never given the
image) gives exactly the uncut latents, and the uncut run decodes to the frames of the plain diffusers
image-to-video call built from the same tiny components. The image condition (VAE latents of the first
frame and its mask; Wan 2.1's CLIP image embeds) travels in the checkpoint, so only the first segment
needs the image. Then the edge's rules: an I2V model needs an image, takes no strength, and sizes are
multiples of 16."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import WanImageToVideoPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from init_images import circle_png

from farm.cli.main import main
from farm.contracts.domain import JobSpec, NodeInfo, SegmentTask
from farm.contracts.errors import CheckpointError, InvalidInput
from farm.jobs.catalog import FAMILY_SAMPLERS, get_model
from farm.jobs.jobspec import make_job
from farm.jobs.sources import external_model
from farm.pipelines import schedulers
from farm.pipelines.engine import Engine
from farm.pipelines.families import get_family
from farm.pipelines.runner import SegmentRunner
from farm.wire import checkpoint_codec as wire

MODELS = {"wan21_i2v": "tiny-wan21-i2v", "wan22_i2v": "tiny-wan22-i2v"}
CASES = [(family, sampler) for family in MODELS for sampler in FAMILY_SAMPLERS[family]]




IMAGE = circle_png()


def job_for(family: str, sampler: str, image: bytes = IMAGE) -> JobSpec:
    return make_job(model=MODELS[family], prompts=["a red circle rolls", "a blue square"], seeds=1, steps=4,
                    sampler=sampler, frames=5, width=32, height=32, init_image=image)


def ids(case: tuple[str, str]) -> str:
    return "-".join(case)


def experts_after(engine: Engine, scheduler: SchedulerMixin, start: int) -> set[str]:
    """The denoisers iterations [start, end) run on: Wan 2.2's rule (t >= boundary is the high-noise
    expert), or Wan 2.1's one transformer."""
    ratio = engine.index.get("boundary_ratio")
    if ratio is None:
        return {"transformer"}
    boundary = ratio * scheduler.config.num_train_timesteps
    return {"transformer" if t >= boundary else "transformer_2" for t in scheduler.timesteps[start:]}


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_cut_at_every_step_boundary_equals_uncut(case: tuple[str, str], engines) -> None:
    """One node runs the shard segment by segment; at each boundary its checkpoint goes to a fresh node,
    given no image, which loads only the experts it runs and must end on the uncut latents."""
    family, sampler = case
    e, job = engines(family), job_for(family, sampler)
    total = schedulers.evaluations(job.sampler, job.run_steps)
    live = e.first.encode(job, job.samples(), IMAGE)
    checkpoints = []
    for cut in schedulers.whole_step_ends(job.sampler, job.run_steps)[1:-1]:
        live = e.first.denoise(live, cut)
        checkpoints.append((cut, wire.encode(e.first.to_checkpoint(live))))
    uncut = e.first.denoise(live, total).latents
    low_only = 0
    for cut, payload in checkpoints:
        cp = wire.decode(payload)
        assert {"condition", "prompt_embeds"} <= set(cp.conditioning)
        assert ("image_embeds" in cp.conditioning) == (family == "wan21_i2v")  # only Wan 2.1 I2V has CLIP
        node = Engine(get_family(family), e.folder, "test", torch.device("cpu"))  # holds nothing yet
        resumed = node.denoise(node.from_checkpoint(cp, job), total)
        assert torch.equal(resumed.latents, uncut), f"cut at evaluation {cut} changed the latents"
        assert node.loaded_components() == experts_after(node, resumed.scheduler, cut), \
            "a middle segment loaded more than the experts it runs"
        low_only += node.loaded_components() == {"transformer_2"}
    assert family == "wan21_i2v" or low_only, "some Wan 2.2 cut should fall after the expert boundary"


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_uncut_run_equals_plain_image_to_video_pipeline_call(case: tuple[str, str], engines) -> None:
    family, sampler = case
    engine, job = engines(family).first, job_for(family, sampler)
    live = engine.encode(job, job.samples(), IMAGE)
    ours = engine.decode(engine.denoise(live, schedulers.evaluations(job.sampler, job.run_steps)))
    theirs = engine.plain(job, job.samples(), IMAGE)
    assert type(engine.pipes["all"]) is WanImageToVideoPipeline
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        assert a.shape == (job.frames, job.height, job.width, 3) and a.dtype == np.uint8 and a.std() > 1
        assert np.array_equal(a, b)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_the_image_conditions_the_video(family: str, engines) -> None:
    """Another init image, same prompts and seeds: other latents (the condition reaches the denoiser; with
    random tiny weights by 40% on Wan 2.1 I2V, which also attends to the image, and 0.7% on Wan 2.2)."""
    engine = engines(family).first

    def latents(image: bytes) -> torch.Tensor:
        job = job_for(family, "flow_euler", image)
        return engine.denoise(engine.encode(job, job.samples(), image), job.run_steps).latents

    ours, other = latents(IMAGE), latents(circle_png(background=(240, 220, 40)))
    assert (ours - other).abs().mean() > 1e-3 * ours.abs().mean()


def test_the_first_segment_needs_its_image(engines) -> None:
    engine = engines("wan21_i2v").first
    job = job_for("wan21_i2v", "unipc")
    with pytest.raises(CheckpointError, match="init image"):
        engine.encode(job, job.samples(), None)


def test_a_later_segment_on_another_node_needs_no_image(farm_home) -> None:
    """Through the node's runner, as the farm runs it: the first segment brings the image, the second
    runs on another node from the checkpoint alone and returns the plain pipeline's frames."""
    job = make_job(model="tiny-wan21-i2v", prompts=["a red circle rolls"], seeds=2, steps=4, frames=5,
                   init_image=IMAGE)
    first, second = SegmentRunner(NodeInfo("a", 12.0), farm_home), SegmentRunner(NodeInfo("b", 12.0), farm_home)
    head = first.run(SegmentTask(job, "s0", job.samples(), 0, 0, 2, None, init_image=IMAGE))
    tail = second.run(SegmentTask(job, "s0", job.samples(), 1, 2, 4, head.checkpoint))
    engine = second.engines["tiny-wan21-i2v"]
    assert engine.loaded_components() == {"transformer", "vae"}  # no text or image encoder on node b
    plain = engine.plain(job, job.samples(), IMAGE)
    assert tail.images == tuple(p.tobytes() for p in plain)


@pytest.mark.parametrize(("family", "two_experts"), [("wan21_i2v", False), ("wan22_i2v", True)])
def test_a_real_folder_is_an_image_to_video_model(family: str, two_experts: bool, tmp_path) -> None:
    """A diffusers folder of `WanImageToVideoPipeline` is Wan 2.1 I2V, or Wan 2.2 I2V with a second expert;
    costed as Wan 2.1 from its files (the image encoder is not priced); TI2V's expand_timesteps is refused."""
    folder = tmp_path / family
    get_family(family).build_tiny().save_pretrained(folder)
    info = get_model(str(folder))
    assert (info.family, info.memory.timing, info.default_guidance) == (family, "wan21", 3.5 if two_experts else 5.0)
    with pytest.raises(InvalidInput, match="init_image"):
        make_job(model=str(folder), prompts=["a"])
    index = folder / "model_index.json"
    index.write_text(index.read_text().replace('"expand_timesteps": false', '"expand_timesteps": true'))
    external_model.cache_clear()
    with pytest.raises(InvalidInput, match="expand_timesteps") as e:
        get_model(str(folder))
    assert e.value.field == "model"
    external_model.cache_clear()


# ----- validation at the edge ------------------------------------------------------------------------


def refused(field: str, match: str, **fields) -> None:
    with pytest.raises(InvalidInput, match=match) as e:
        make_job(**{"prompts": ["a"], **fields})
    assert e.value.field == field and "\n" not in str(e.value)


@pytest.mark.parametrize("model", sorted(MODELS.values()))
def test_an_image_to_video_model_needs_an_image(model: str) -> None:
    refused("init_image", "image-to-video model: it needs an init image", model=model)
    refused("strength", "only with an init image", model=model, strength=1.0)


@pytest.mark.parametrize("strength", [0.5, 0.75, 0.01])
def test_strength_does_not_apply_to_image_to_video(strength: float) -> None:
    refused("strength", "does not apply to image-to-video", model="tiny-wan21-i2v", init_image=IMAGE,
            strength=strength)
    for given in (None, 1, 1.0):  # left out, or the one value that means what it does: every step runs
        job = make_job(model="tiny-wan22-i2v", prompts=["a"], init_image=IMAGE, strength=given)
        assert (job.strength, job.first_step, job.run_steps) == (1.0, 0, job.steps)


@pytest.mark.parametrize(("field", "value"), [("width", 40), ("height", 24), ("width", 8)])
def test_sizes_are_multiples_of_16(field: str, value: int) -> None:
    refused(field, "multiple of 16 from 16 to 64", model="tiny-wan21-i2v", init_image=IMAGE, **{field: value})


def test_frames_image_and_text_to_video_rules() -> None:
    refused("frames", r"4k\+1", model="tiny-wan22-i2v", init_image=IMAGE, frames=6)
    refused("init_image", "PIL can read", model="tiny-wan21-i2v", init_image=b"not an image")
    for model in ("tiny-wan21", "tiny-wan22"):  # text-to-video checkpoints take no image
        refused("init_image", "takes no init image", model=model, init_image=IMAGE)


def test_cli_refuses_a_missing_image_in_one_line(tmp_path, capsys) -> None:
    argv = ["render", "a red circle", "--model", "tiny-wan21-i2v", "--simulate", "24",
            "--out", str(tmp_path / "out")]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert "init_image: " in err and "Traceback" not in err and len(err.splitlines()) == 1
