"""Image-to-video for LTX-Video (`LTXImageToVideoPipeline`: the text-to-video checkpoint, given a first
frame) and HunyuanVideo-1.5 I2V (`HunyuanVideo15ImageToVideoPipeline`: a checkpoint of its own, with a
SigLIP image encoder) as resumable segments: a run cut at every step boundary (through a msgpack
checkpoint, into an engine that is never given the image and loads only its denoiser) gives exactly the
uncut latents, and the uncut run decodes to the frames of the plain diffusers call built from the same
tiny components. Then the edge's rules: LTX-Video takes an image or none, HunyuanVideo-1.5 I2V needs
one and sizes its video from it, and neither takes a strength."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from init_images import circle_png

from farm.cli.main import main
from farm.contracts.domain import JobSpec, NodeInfo, SegmentTask
from farm.contracts.errors import CheckpointError, InvalidInput
from farm.jobs.catalog import get_model
from farm.jobs.init_image import bucket_size
from farm.jobs.jobspec import make_job
from farm.jobs.sources import external_model
from farm.pipelines import schedulers
from farm.pipelines.runner import SegmentRunner
from farm.wire import checkpoint_codec as wire

MODELS = {"ltxv": "tiny-ltx", "hunyuanvideo15_i2v": "tiny-hunyuan15-i2v"}
# HunyuanVideo-1.5 attends over 1256 text tokens per step: few steps and samples keep its tests to seconds.
STEPS = {"ltxv": 3, "hunyuanvideo15_i2v": 3}
# What the checkpoint must carry for a later segment to run without the image.
IMAGE_CONDITIONING = {"ltxv": {"conditioning_mask"}, "hunyuanvideo15_i2v": {"image_embeds", "image_latents"}}




IMAGE = circle_png()


def job_for(family: str, prompts: tuple[str, ...] = ("a red circle rolls", "a blue square"), seed: int = 0,
            steps: int | None = None) -> JobSpec:
    size = {"width": 32, "height": 32} if family == "ltxv" else {}  # Hunyuan I2V: 32x32 from the image
    return make_job(model=MODELS[family], prompts=list(prompts), seed=seed, steps=steps or STEPS[family], frames=9,
                    init_image=IMAGE, **size)


def run(e, job: JobSpec, cut: int | None) -> torch.Tensor:
    """The shard's run, uncut or cut at evaluation `cut` and resumed by an engine that never encodes."""
    total = schedulers.evaluations(job.sampler, job.run_steps)
    live = e.first.encode(job, job.samples(), IMAGE)
    if cut is None:
        return e.first.denoise(live, total).latents
    checkpoint = e.first.to_checkpoint(e.first.denoise(live, cut))
    assert IMAGE_CONDITIONING[e.first.family.name] <= set(checkpoint.conditioning)
    resumed = e.middle.from_checkpoint(wire.decode(wire.encode(checkpoint)), job)
    out = e.middle.denoise(resumed, total).latents
    assert e.middle.loaded_components() == set(e.middle.family.stages["denoise"]), \
        "a middle segment loaded more than its denoiser"
    return out


@pytest.mark.parametrize("family", sorted(MODELS))
def test_cut_at_every_step_boundary_equals_uncut(family: str, engines) -> None:
    e = engines(family)
    job = job_for(family) if family == "ltxv" else job_for(family, ("a red circle rolls",))
    assert (job.first_step, job.run_steps) == (0, job.steps)  # image-to-video runs every step
    uncut = run(e, job, None)
    for cut in schedulers.whole_step_ends(job.sampler, job.run_steps)[1:-1]:
        assert torch.equal(run(e, job, cut), uncut), f"cut at evaluation {cut} changed the latents"


def test_ltx_keeps_the_image_as_the_first_latent_frame(engines) -> None:
    """Per-token timesteps: the first frame's tokens are at timestep 0 and never stepped, so the
    encoded image comes out of the loop as it went in, while every later frame is denoised."""
    engine, job = engines("ltxv").first, job_for("ltxv")
    live = engine.encode(job, job.samples(), IMAGE)
    tokens = int(live.cond["latent_grid"][1] * live.cond["latent_grid"][2])  # one latent frame
    assert live.cond["conditioning_mask"].sum(dim=1).tolist() == [tokens] * len(job.samples())
    before = live.latents.clone()
    after = engine.denoise(live, job.steps).latents
    assert torch.equal(after[:, :tokens], before[:, :tokens])
    assert not torch.equal(after[:, tokens:], before[:, tokens:])


def test_ltx_uncut_run_equals_plain_image_to_video_call(engines) -> None:
    """diffusers 0.42.1's `LTXImageToVideoPipeline` cannot decode a batch with one generator per sample
    (its decode noise goes through `torch.randn`), so its baseline is one call per sample: each
    sample is rendered as a one-sample job and compared bit for bit."""
    engine, job = engines("ltxv").first, job_for("ltxv", ("a blue square",), seed=5)
    live = engine.encode(job, job.samples(), IMAGE)
    ours = engine.decode(engine.denoise(live, job.steps))
    theirs = engine.plain(job, job.samples(), IMAGE)
    assert len(ours) == len(theirs) == 1
    assert ours[0].shape == (job.frames, job.height, job.width, 3) and ours[0].std() > 1
    assert np.array_equal(ours[0], theirs[0])


def test_hunyuan_uncut_run_equals_plain_image_to_video_call(engines) -> None:
    """Two samples (one generator each, the image's embeds and latent repeated per sample), two steps."""
    engine, job = engines("hunyuanvideo15_i2v").first, job_for("hunyuanvideo15_i2v", steps=2)
    live = engine.encode(job, job.samples(), IMAGE)
    ours = engine.decode(engine.denoise(live, job.steps))
    theirs = engine.plain(job, job.samples(), IMAGE)
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        assert a.shape == (job.frames, job.height, job.width, 3) and a.std() > 1
        assert np.array_equal(a, b)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_the_first_segment_needs_its_image(family: str, engines) -> None:
    engine, job = engines(family).first, job_for(family)
    with pytest.raises(CheckpointError, match="init image"):
        engine.encode(job, job.samples(), None)


def test_a_later_ltx_segment_on_another_node_needs_no_image(farm_home) -> None:
    """Through the node's runner, as the farm runs it: the first segment brings the image, the second
    runs on another node from the checkpoint alone (no text encoder there) and returns the plain
    pipeline's frames."""
    job = job_for("ltxv", ("a red circle rolls",), seed=3)
    first, second = SegmentRunner(NodeInfo("a", 12.0), farm_home), SegmentRunner(NodeInfo("b", 12.0), farm_home)
    head = first.run(SegmentTask(job, "s0", job.samples(), 0, 0, 1, None, init_image=IMAGE))
    tail = second.run(SegmentTask(job, "s0", job.samples(), 1, 1, job.steps, head.checkpoint))
    engine = second.engines[job.model]
    assert engine.loaded_components() == {"transformer", "vae"}
    assert tail.images == tuple(p.tobytes() for p in engine.plain(job, job.samples(), IMAGE))


def test_a_hunyuan_i2v_folder_is_its_own_family(engines) -> None:
    """A real I2V checkpoint is found by its pipeline class; its size rule comes from its transformer's
    config, and it is costed as HunyuanVideo-1.5 (the image encoder is not priced)."""
    info = external_model(str(engines("hunyuanvideo15_i2v").folder))
    assert (info.family, info.image_target_size) == ("hunyuanvideo15_i2v", 32)
    assert info.memory.name.startswith("hunyuanvideo15")
    assert get_model("tiny-hunyuan15-i2v").memory is get_model("tiny-hunyuan15").memory


# ----- validation at the edge -------------------------------------------------------------------------


def refused(field: str, match: str, **fields) -> str:
    with pytest.raises(InvalidInput, match=match) as e:
        make_job(**{"prompts": ["a"], "frames": 9, **fields})
    assert e.value.field == field and "\n" not in str(e.value)
    return str(e.value)


def test_ltx_takes_an_image_or_none() -> None:
    text = make_job(model="tiny-ltx", prompts=["a"], frames=9)
    image = make_job(model="tiny-ltx", prompts=["a"], frames=9, init_image=IMAGE, strength=1)
    assert not text.init_image and image.init_image and (image.strength, image.first_step) == (1.0, 0)
    refused("width", "multiple of 32", model="tiny-ltx", init_image=IMAGE, width=48)
    refused("init_image", "PIL can read", model="tiny-ltx", init_image=b"not an image")


@pytest.mark.parametrize("model", sorted(MODELS.values()))
@pytest.mark.parametrize("strength", [0.7, 0.0, "1"])
def test_video_i2v_refuses_a_strength(model: str, strength: object) -> None:
    refused("strength", "does not apply to image-to-video", model=model, init_image=IMAGE, strength=strength)


def test_hunyuan_i2v_needs_an_image() -> None:
    refused("init_image", "needs an init image", model="tiny-hunyuan15-i2v")
    refused("strength", "only with an init image", model="tiny-hunyuan15-i2v", strength=0.5)


def test_hunyuan_i2v_sizes_the_video_from_the_image() -> None:
    """The pipeline takes no width or height: the bucket nearest the image's aspect ratio decides."""
    wide = circle_png(64, 16)
    job = make_job(model="tiny-hunyuan15-i2v", prompts=["a"], frames=9, init_image=wide)
    assert (job.width, job.height) == (64, 16)
    assert make_job(model="tiny-hunyuan15-i2v", prompts=["a"], frames=9, init_image=wide, width=64).width == 64
    message = refused("height", "must be 16 or left out", model="tiny-hunyuan15-i2v", init_image=wide, height=32)
    assert "64x16" in message


@pytest.mark.parametrize("target", [32, 640, 960])
def test_bucket_size_is_diffusers_rule(target: int) -> None:
    from diffusers.pipelines.hunyuan_video1_5.image_processor import HunyuanVideo15ImageProcessor

    processor = HunyuanVideo15ImageProcessor(vae_scale_factor=16)
    for width, height in [(48, 40), (40, 48), (64, 16), (1920, 1080), (1080, 1920), (500, 500), (900, 100)]:
        data = circle_png(width, height)
        h, w = processor.calculate_default_height_width(height, width, target)
        assert bucket_size(data, target, 16) == (w, h), (width, height)


def test_cli_refuses_hunyuan_i2v_without_an_image_in_one_line(tmp_path, capsys) -> None:
    argv = ["render", "a red circle", "--model", "tiny-hunyuan15-i2v", "--simulate", "8",
            "--out", str(tmp_path / "out")]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert "init_image: " in err and "Traceback" not in err and len(err.splitlines()) == 1
