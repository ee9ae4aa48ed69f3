"""The encode stage as a unit of its own. A job with an init image runs the family's image encoder
(CLIP ViT-H/14 for Wan 2.1 I2V, SigLIP so400m for HunyuanVideo-1.5 I2V) and a VAE encode of the image
besides the text encoders in its first segment, and the cost model prices them (weights from parameter
counts, the VAE encode's activations bounded by the measured decode's). A shard whose node holds its
steps but not its encode starts with an empty `(0, 0)` segment that only encodes, on a node it fits:
checked on the full-size cost model, and with real tiny Wan 2.1 I2V pipelines through the coordinator
on two simulated cards (as tests/test_stage_placement.py checks the decode)."""

from __future__ import annotations

from pathlib import Path

import pytest
from init_images import circle_png
from test_stage_placement import NO_STAGES, MemorySink, RunnerExecutor, run_to_end

from farm.contracts.domain import Assignment, JobSpec, NodeInfo, NodeState, ReadySegment, SegmentTask
from farm.contracts.errors import DoesNotFit
from farm.core import costmodel, planner
from farm.core.costmodel import MemoryMode, Role, Shape
from farm.core.planner import Demand
from farm.jobs.demand import job_shape
from farm.jobs.jobspec import make_job
from farm.pipelines.families import get_family
from farm.pipelines.runner import SegmentRunner
from farm.runtime.coordinator import Coordinator
from farm.runtime.outputs import provenance

IMAGE = circle_png()

WAN = Shape("wan21", 832, 480, 81, "bf16")
WAN_I2V = Shape("wan21", 832, 480, 81, "bf16", init_frames=81, image_encoder="clip_vit_h14")
HY = Shape("hunyuanvideo15", 848, 480, 121, "bf16")
HY_I2V = Shape("hunyuanvideo15", 848, 480, 121, "bf16", init_frames=1, image_encoder="siglip_so400m")


def job(model: str, init: bool, frames: int = 1) -> JobSpec:
    return JobSpec(model, ("p",), (1,), 8, 32, 32, 5.0, "flow_euler", frames=frames,
                   init_image="ab" * 32 if init else "")


@pytest.mark.parametrize(("model", "frames", "init_frames", "encoder"), [
    ("tiny-wan21-i2v", 33, 33, "clip_vit_h14"),  # encodes the image as the first frame of a blank video
    ("tiny-wan22-i2v", 33, 33, ""),  # Wan 2.2 I2V A14B has no image encoder
    ("tiny-hunyuan15-i2v", 33, 1, "siglip_so400m"),  # encodes the image alone
    ("tiny-ltx", 33, 1, ""),
    ("tiny-sdxl", 1, 1, ""),  # img2img
])
def test_a_jobs_shape_knows_its_init_image_and_image_encoder(model: str, frames: int, init_frames: int,
                                                            encoder: str) -> None:
    shape = job_shape(job(model, True, frames))
    assert (shape.init_frames, shape.image_encoder) == (init_frames, encoder)
    text = job_shape(job(model, False, frames))
    assert (text.init_frames, text.image_encoder) == (0, "")
    assert [c.role for c in text.profile.components].count(Role.LATENT) == 0
    assert [c.role for c in shape.profile.components].count(Role.LATENT) == 1


def test_the_image_encoder_adds_its_weights_and_the_vae_encode_shares_the_vaes() -> None:
    vae_only = Shape("wan21", 832, 480, 81, "bf16", init_frames=81)
    # The VAE encode runs on the VAE's weights: no second copy resident or loaded.
    assert vae_only.profile.weights_gib == WAN.profile.weights_gib
    # CLIP ViT-H/14 (630.8 M parameters) runs in fp32: 4 bytes each, resident in full mode.
    clip = 630_766_080 * 4 / 2**30
    assert costmodel.component_peak_gib(WAN_I2V, "transformer", 1) == pytest.approx(
        costmodel.component_peak_gib(vae_only, "transformer", 1) + clip)
    # Offloaded, the encoder's own peak is its weights plus one image's activations.
    offloaded = costmodel.component_peak_gib(WAN_I2V, "clip_vit_h14", 1, MemoryMode.OFFLOAD)
    assert offloaded == pytest.approx(clip + 0.05 * 2)
    siglip = costmodel.component_peak_gib(HY_I2V, "siglip_so400m", 4, MemoryMode.OFFLOAD)
    assert siglip == pytest.approx(428_225_600 * 2 / 2**30 + 0.05)  # once per shard, whatever the batch


def test_the_vae_encode_is_priced_at_the_frames_it_encodes_at_most_as_the_decode() -> None:
    for mode in (MemoryMode.OFFLOAD, MemoryMode.OFFLOAD_TILED):
        decode = costmodel.component_peak_gib(WAN_I2V, "vae", 2, mode)
        # Wan encodes the whole blank video: priced as its decode (the upper bound used, no encode measured).
        assert costmodel.component_peak_gib(WAN_I2V, "vae_encode", 2, mode) == pytest.approx(decode)
    # HunyuanVideo-1.5 I2V encodes one frame of 121 (one latent frame of 31), tiled only
    # (its untiled decode ran out of 80 GB, so no untiled figure bounds it); the tiled decode's
    # activations are measured at half the reference shape (its cap), one frame is 1/31 of it.
    weights = HY_I2V.profile.component("vae").weights_gib
    one = costmodel.component_peak_gib(HY_I2V, "vae_encode", 1, MemoryMode.OFFLOAD_TILED) - weights
    video = costmodel.component_peak_gib(HY_I2V, "vae", 1, MemoryMode.OFFLOAD_TILED) - weights
    assert one == pytest.approx(video * (1 / 31) / 0.5)
    assert costmodel.component_peak_gib(HY_I2V, "vae_encode", 1, MemoryMode.OFFLOAD) == float("inf")


def test_the_first_segment_is_priced_with_what_it_loads() -> None:
    # A card whose usable budget lies between the text-to-video and the image-to-video full-mode peaks
    # (tiled decode): the same Wan 2.1 job goes there in full_tiled mode without an image, and in a
    # leaner mode with one, because its shard also holds the CLIP encoder.
    t2v = dict(costmodel.mode_needs(WAN, 1))["full_tiled"]
    i2v = dict(costmodel.mode_needs(WAN_I2V, 1))["full_tiled"]
    assert i2v > t2v
    vram = ((t2v + i2v) / 2 + costmodel.RESERVE_GIB) / (1 - costmodel.MARGIN)
    card = [NodeInfo("card", vram)]
    (plain,) = planner.plan_shards("t", Demand("wan", WAN, 30, (0,)), card)
    (image,) = planner.plan_shards("i", Demand("wan-i2v", WAN_I2V, 30, (0,)), card)
    assert plain.memory_mode == "full_tiled" and plain.need_gib == pytest.approx(t2v)
    assert image.memory_mode == "offload"
    assert dict(image.needs)["full_tiled"] == pytest.approx(i2v)


# ----- encode-only segments -----------------------------------------------------------------------

# Wan 2.1 I2V at 480x320x17: streamed, the umT5 encoder peaks at 2.39 GiB, more than the denoiser
# (0.76) or the tiled decode (1.28). A card its owner caps at 3 GiB (2.2 usable) holds the steps and
# the decode, not the encode.
SHORT_I2V = Shape("wan21", 480, 320, 17, "bf16", init_frames=17, image_encoder="clip_vit_h14")
CAPPED, ROOM = NodeInfo("capped3", 3, 2.0), NodeInfo("b12", 12, 1.0)


def test_a_card_too_small_for_the_encoders_gets_the_steps_while_the_encode_runs_elsewhere() -> None:
    usable = costmodel.usable_gib(CAPPED.vram_gib)
    assert min(p for _, p in costmodel.mode_needs(SHORT_I2V, 1, costmodel.ENCODE_ROLES)) > usable
    video = Demand("wan-i2v", SHORT_I2V, 30, tuple(range(4)))
    assert {s.home for s in planner.plan_shards("j", video, [CAPPED, ROOM], context=NO_STAGES)} == {"b12"}
    shards = planner.plan_shards("j", video, [CAPPED, ROOM])
    assert {s.home for s in shards} == {"capped3", "b12"}
    for s in shards:
        split = s.home == "capped3"
        assert bool(s.encode_needs) == split and not s.decode_needs  # both cards decode their own shards
        if split:
            assert s.bounds[0] == (0, 0) and s.bounds[1][0] == 0 and s.bounds[-1][1] == 30
            assert s.encode_only(0) and not s.encode_only(1) and not s.decode_only(0)
            assert s.need_gib <= usable < min(p for _, p in s.encode_needs) <= costmodel.usable_gib(12)
            assert dict(s.needs)[s.memory_mode] == s.need_gib  # the home's peak has no encoder in it
    # the head's admission agrees: the encode fits the 12 GiB card, nothing fits two capped cards
    costmodel.check_fits(SHORT_I2V, [3, 12])
    with pytest.raises(DoesNotFit):
        costmodel.check_fits(SHORT_I2V, [3, 3])
    with pytest.raises(DoesNotFit):
        planner.plan_shards("j", video, [CAPPED, NodeInfo("c3", 3)])


def test_a_waiting_encode_goes_before_the_own_work_of_the_card_it_fits() -> None:
    encode = costmodel.mode_needs(SHORT_I2V, 1, costmodel.ENCODE_ROLES)
    steps = costmodel.mode_needs(SHORT_I2V, 1)
    ready = [ReadySegment("big/s0", 3, "b12", steps[0][1], "big", "wan", 0, steps),
             ReadySegment("j/s1", 0, "capped3", encode[0][1], "j", "wan", 0, encode, encode_only=True)]
    nodes = [NodeState(CAPPED), NodeState(ROOM)]
    # the capped card cannot take its own encode; the 12 GiB card takes it before its own steps
    assert planner.plan_tick(ready, nodes) == [Assignment("b12", "j/s1", 0, "group_offload")]


def test_a_video_whose_encode_does_not_fit_its_node_is_encoded_on_another(farm_home: Path) -> None:
    # tiny-wan21-i2v at 32x32x5 is costed as 832x832x5: the streamed umT5 encoder peaks at 2.39 GiB,
    # the denoiser at 0.98 and the decode at 1.93. The 3 GiB card is ten times faster: the steps and
    # the decode go there, the encode (text, CLIP and the VAE encode of the image) cannot. (Enough steps
    # that the 12 GiB card, which reports the model loaded once it has encoded, does not take them over.)
    job = make_job(model="tiny-wan21-i2v", prompts=["a red circle rolls"], seed=5, steps=12, width=32, height=32,
                   frames=5, init_image=IMAGE)
    shape = job_shape(job)
    small, room = NodeInfo("fast3", 3, 10.0), NodeInfo("slow12", 12, 1.0)
    assert costmodel.best_fit(shape, small.vram_gib, 1) is None
    assert costmodel.best_fit(shape, small.vram_gib, 1, roles=costmodel.ALL_ROLES - costmodel.ENCODE_ROLES)

    executor, sink = RunnerExecutor([small, room], farm_home), MemorySink()
    farm = Coordinator(executor, sink, clock=lambda: 1000.0, max_segment_steps=6)
    job_id = farm.submit(job, init_image=IMAGE)
    run_to_end(farm, job_id)
    shard = next(iter(farm.state.jobs[job_id].shards.values())).shard
    assert shard.home == "fast3" and shard.bounds == ((0, 0), (0, 6), (6, 12))

    # the encode alone on the 12 GiB card (with the image), every step and the decode on the 3 GiB one
    ran = [(node, task.start, task.end, task.last, task.init_image is not None) for node, task, _ in executor.ran]
    assert ran == [("slow12", 0, 0, False, True), ("fast3", 0, 6, False, False), ("fast3", 6, 12, True, False)]
    stages = get_family("wan21_i2v").stages
    assert executor.ran[0][2] == set(stages["encode"]) | set(stages["decode"])  # encoders and the VAE, no denoiser
    assert not executor.ran[1][2] & set(stages["encode"])  # the steps' node never loads an encoder

    # written exactly once, equal to the undisturbed run on one node
    assert [(j, i) for j, i, _, _ in sink.written] == [(job_id, 0)]
    alone = SegmentRunner(NodeInfo("alone", 24), farm_home, threads=1)
    whole = alone.run(SegmentTask(job, "x/s0", job.samples(), 0, 0, 12, None, init_image=IMAGE))
    assert sink.written[0][2] == whole.images[0]

    # provenance names the node of every stage
    runs = sink.written[0][3]
    assert [(r.node, r.stages) for r in runs] == [("slow12", "encode"), ("fast3", "denoise"),
                                                  ("fast3", "denoise+decode")]
    meta = provenance(job_id, job, job.samples()[0], runs)
    assert meta["segments"][0]["node"] == "slow12" and meta["segments"][0]["stages"] == "encode"
    started = [(e.node, e.message) for e in farm.events(0) if e.kind == "segment_started"]
    assert started[0][0] == "slow12" and started[0][1].endswith("encode only")
    assert not [e for e in farm.events(0) if e.kind == "shard_moved"]  # its home stays where it denoises
    executor.shutdown()
