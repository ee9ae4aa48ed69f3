"""Stages as placeable units: a shard whose decode fits no memory mode of its node runs its encode and
denoise there and its decode as an empty last segment `(end, end)` on a node the decode fits.

The planner's part is checked on the measured full-size cost model; the farm's part with the real
coordinator and real tiny HunyuanVideo-1.5 pipelines on two simulated cards (the work runs on the CPU,
each segment through the node's own `SegmentRunner`, checkpoints in between as msgpack)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from farm.contracts.domain import (
    Assignment,
    JobSpec,
    NodeInfo,
    NodeState,
    ReadySegment,
    Sample,
    SegmentResult,
    SegmentTask,
    StepRun,
)
from farm.contracts.errors import DoesNotFit
from farm.core import costmodel, planner
from farm.core.baselines import without_stage_placement
from farm.core.costmodel import MemoryMode, Shape
from farm.core.planner import Demand, PlanContext
from farm.jobs.demand import job_shape
from farm.jobs.jobspec import make_job
from farm.pipelines.families import get_family
from farm.pipelines.runner import SegmentRunner
from farm.runtime.coordinator import Coordinator
from farm.runtime.outputs import provenance
from farm.runtime.simulate import SimJob, SimNode, simulate

CARDS = [NodeInfo("a8", 8, 1.0), NodeInfo("b12", 12, 1.6), NodeInfo("c16", 16, 2.2), NodeInfo("d24", 24, 3.5)]
# HunyuanVideo-1.5 at 848x480x61: the denoiser streams in 13.1 GiB (a 16 GiB card holds it), the
# tiled VAE decode peaks at 16.1 GiB (only the 24 GiB card holds it).
HY61 = Shape("hunyuanvideo15", 848, 480, 61)
NO_STAGES = PlanContext(place_stages=False)


def homes(shards) -> set[str]:
    return {s.home for s in shards}


def test_a_decode_that_fits_only_the_largest_card_no_longer_keeps_the_denoiser_there() -> None:
    video = Demand("hy", HY61, 50, tuple(range(6)))
    assert homes(planner.plan_shards("j", video, CARDS, context=NO_STAGES)) == {"d24"}
    shards = planner.plan_shards("j", video, CARDS)
    assert homes(shards) == {"c16", "d24"}
    for s in shards:
        split = s.home == "c16"
        assert bool(s.decode_needs) == split  # the 24 GiB card decodes its own shards
        if split:
            assert s.bounds[-1] == (50, 50) and s.bounds[-2][1] == 50 and s.decode_only(len(s.bounds) - 1)
            assert s.need_gib <= costmodel.usable_gib(16) < min(p for _, p in s.decode_needs)
            # HunyuanVideo's VAE runs out of memory untiled: its decode is priced tiled only
            assert all(MemoryMode(m).tiled for m, _ in s.decode_needs)
            assert min(p for _, p in s.decode_needs) <= costmodel.usable_gib(24)


def test_a_waiting_decode_goes_before_the_own_work_of_the_card_it_fits() -> None:
    decode = costmodel.mode_needs(HY61, 1, costmodel.DECODE_ROLES)
    steps = costmodel.mode_needs(HY61, 1)
    ready = [ReadySegment("big/s0", 7, "d24", steps[0][1], "big", "hy", 0, steps),
             ReadySegment("j/s1", 9, "c16", decode[0][1], "j", "hy", 0, decode, decode_only=True)]
    nodes = [NodeState(CARDS[2], busy=True), NodeState(CARDS[3])]
    assert planner.plan_tick(ready, nodes) == [Assignment("d24", "j/s1", 9, "offload_tiled")]


def test_no_decode_segment_without_a_node_the_decode_fits() -> None:
    video = Demand("hy", HY61, 50, (0,))
    with pytest.raises(DoesNotFit):
        planner.plan_shards("j", video, CARDS[:3])  # the denoiser fits the 16 GiB card, the decode nothing


def test_admission_is_unchanged_only_placement_widens() -> None:
    """Each stage's cheapest peak is its peak under streamed, tiled offload, so a job whose every stage
    fits some node fits the node with the most room whole: stage placement admits no job the planner
    refused before; it lets the smaller cards take its denoising."""
    shapes = [Shape("hunyuanvideo15", w, h, f) for w, h in ((480, 320), (640, 368), (848, 480)) for f in (33, 61, 121)]
    shapes += [Shape("wan21", 832, 480, 81), Shape("wan21", 1280, 720, 81)]
    widened = 0
    for shape, n in itertools.product(shapes, range(1, len(CARDS) + 1)):
        demand, nodes = Demand("m", shape, 30, (0, 1)), CARDS[:n]
        outcome = []
        for context in (NO_STAGES, PlanContext()):
            try:
                outcome.append(homes(planner.plan_shards("j", demand, nodes, context=context)))
            except DoesNotFit:
                outcome.append(None)
        assert (outcome[0] is None) == (outcome[1] is None), shape
        try:
            costmodel.check_fits(shape, [n.vram_gib for n in nodes])  # the head's check at submission agrees
            assert outcome[1] is not None, shape
        except DoesNotFit:
            assert outcome[1] is None, shape
        widened += outcome[0] is not None and outcome[0] != outcome[1]
    assert widened


def test_the_simulated_farm_decodes_on_the_card_with_room_and_finishes_sooner() -> None:
    nodes = [SimNode(info, info.speed) for info in CARDS]
    jobs = [SimJob(f"hy{i}", "hy", HY61, 1, 20) for i in range(3)]
    staged = simulate(nodes, jobs)
    assert staged.jobs_done == 3 and staged.duplicated == 0
    whole = simulate(nodes, jobs, without_stage_placement)
    assert whole.jobs_done == 3 and staged.makespan < whole.makespan
    assert whole.busy_seconds["c16"] == 0 < staged.busy_seconds["c16"]


# ----- the farm with real tiny pipelines ------------------------------------------------------------


def run_to_end(farm: Coordinator, job_id: str, ticks: int = 50) -> None:
    """Tick the coordinator until the job ends (each tick runs the segments it started); it must be done."""
    for _ in range(ticks):
        farm.tick(0)
        if farm.get_job(job_id).status.value in ("done", "failed"):
            break
    view = farm.get_job(job_id)
    assert view.status.value == "done", view.error


class RunnerExecutor:
    """The coordinator's `Executor` port over one real `SegmentRunner` per node, in this process: a
    submitted segment runs at the next `wait` (a CPU stands in for each card's GPU)."""

    def __init__(self, nodes: list[NodeInfo], home: Path) -> None:
        self.infos = nodes
        self.runners = {n.name: SegmentRunner(n, home, threads=1) for n in nodes}
        self.handles = itertools.count()
        self.pending: list[tuple[int, str, SegmentTask]] = []
        self.answers: list[tuple[int, object]] = []
        self.ran: list[tuple[str, SegmentTask, set[str]]] = []  # node, task, components loaded after it

    def nodes(self) -> list[NodeInfo]:
        return list(self.infos)

    def submit(self, node: str, task: SegmentTask) -> object:
        handle = next(self.handles)
        self.pending.append((handle, node, task))
        return handle

    def wait(self, timeout: float) -> list[tuple[object, SegmentResult | BaseException]]:
        out, self.answers = self.answers, []
        for handle, node, task in self.pending:
            runner = self.runners[node]
            result = runner.run(task)
            self.ran.append((node, task, runner.engines[task.job.model].loaded_components()))
            out.append((handle, result))
        self.pending = []
        return out

    def step_events(self) -> list:
        return []

    def probe(self, node: str) -> object:
        handle = next(self.handles)
        self.answers.append((handle, True))
        return handle

    def interrupt(self, node: str) -> None:
        """Segments here run to their end."""

    def shutdown(self) -> None:
        for runner in self.runners.values():
            runner.release()


class MemorySink:
    def __init__(self) -> None:
        self.written: list[tuple[str, int, bytes, tuple[StepRun, ...]]] = []

    def write(self, job_id: str, job: JobSpec, sample: Sample, rgb: bytes, runs) -> Path:
        self.written.append((job_id, sample.index, rgb, tuple(runs)))
        return Path(job_id) / f"{sample.index}"


def test_a_video_whose_decode_does_not_fit_its_node_is_decoded_on_another(farm_home: Path) -> None:
    # tiny-hunyuan15 at 32x32x9 is costed as 832x832x9: the denoiser streams in 5.6 GiB (the 8 GiB
    # card holds it), the tiled decode needs 6.9 GiB (only the 12 GiB card). The 8 GiB card is ten
    # times faster, so the video's steps go there; its decode cannot.
    job = make_job(model="tiny-hunyuan15", prompts=["a red ball"], seed=5, steps=3, width=32, height=32, frames=9)
    shape = job_shape(job)
    small, room = NodeInfo("fast8", 8, 10.0), NodeInfo("slow12", 12, 1.0)
    assert costmodel.best_fit(shape, small.vram_gib, 1) is None
    assert costmodel.best_fit(shape, small.vram_gib, 1, roles=costmodel.DENOISE_ROLES) is not None

    executor, sink = RunnerExecutor([small, room], farm_home), MemorySink()
    farm = Coordinator(executor, sink, clock=lambda: 1000.0, max_segment_steps=2)
    job_id = farm.submit(job)
    run_to_end(farm, job_id)
    shard = next(iter(farm.state.jobs[job_id].shards.values())).shard
    assert shard.home == "fast8" and shard.bounds == ((0, 2), (2, 3), (3, 3))

    # every segment ran where it fits: steps on the 8 GiB card, the decode alone on the 12 GiB one
    ran = [(node, task.start, task.end, task.last) for node, task, _ in executor.ran]
    assert ran == [("fast8", 0, 2, False), ("fast8", 2, 3, False), ("slow12", 3, 3, True)]
    decode_components = set(get_family("hunyuanvideo15").stages["decode"])
    assert executor.ran[-1][2] == decode_components  # the decode node loaded the VAE and nothing else

    # written exactly once, equal to the undisturbed run on one node
    assert [(j, i) for j, i, _, _ in sink.written] == [(job_id, 0)]
    alone = SegmentRunner(NodeInfo("alone", 24), farm_home, threads=1)
    whole = alone.run(SegmentTask(job, "x/s0", job.samples(), 0, 0, 3, None))
    assert sink.written[0][2] == whole.images[0]

    # provenance names the node of every stage: in the output's metadata and in the activity log
    runs = sink.written[0][3]
    assert [(r.node, r.stages) for r in runs] == [("fast8", "encode+denoise"), ("fast8", "denoise"),
                                                  ("slow12", "decode")]
    meta = provenance(job_id, job, job.samples()[0], runs)
    assert meta["segments"][-1]["node"] == "slow12" and meta["segments"][-1]["stages"] == "decode"
    started = [(e.node, e.message) for e in farm.events(0) if e.kind == "segment_started"]
    assert started[-1][0] == "slow12" and started[-1][1].endswith("decode only")
    assert not [e for e in farm.events(0) if e.kind == "shard_moved"]  # its home stays where it denoised
    executor.shutdown()
