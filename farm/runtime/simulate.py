"""A farm on a virtual clock: the real coordinator (`apply`, `decide`, the runner) driving simulated
nodes, so a benchmark of the scheduler is a benchmark of the code that runs the farm.

`SimExecutor` is the only thing simulated. It owns each card's true speed (the coordinator sees only
the declared one and learns), and times a segment as:

    model load (when the node does not hold the model; disk speed, counted as a load)
    + offload transfers (components moved over PCIe in an offload memory mode)
    + a fixed dispatch cost per task, and a checkpoint hand-off when the shard moved between nodes
    + denoising steps (`speed.reference_step_seconds` / true speed)
    + VAE decode after the last step.

It checks every segment against the node's budget and that every step of every sample runs exactly
once, in order, so no `decide` function can cheat its way to a short makespan. Nodes may leave and
come back (`Churn`): a node that leaves loses the segment it was running, as when a PC dies.
`bench/scheduler.py` compares `farm.core.decide.decide` with the baselines of `farm.core.baselines`;
`bench/churn.py` measures work redone under churn.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from farm.contracts.domain import JobSpec, NodeInfo, Sample, SegmentResult, SegmentTask, StepRun
from farm.contracts.errors import NodeLost
from farm.contracts.ids import job_of_shard
from farm.core import costmodel
from farm.core.costmodel import MemoryMode, Role, Shape
from farm.core.decide import Decide, decide
from farm.core.speed import (
    OFFLOAD_GIB_PER_S,
    load_seconds,
    reference_decode_seconds,
    reference_step_seconds,
    streamed_step_seconds,
)
from farm.core.transitions import ENDED
from farm.runtime.coordinator import Coordinator
from farm.wire import checkpoint_codec
from farm.wire.checkpoint import Checkpoint, RawTensor

DISPATCH_S = 0.3  # handing a task to a node's actor and getting its result back
HANDOFF_S = 0.5  # moving a checkpoint (latents, scheduler and RNG state) to another node
# Simulated jobs render tiny images (the shape they are costed at is given separately).
SIM_SIZE = 8


@dataclass(frozen=True)
class SimJob:
    job_id: str
    model: str
    shape: Shape
    samples: int
    steps: int
    priority: int = 0
    owner: str = "local"
    arrival: float = 0.0

    def spec(self) -> JobSpec:
        return JobSpec(model=self.model, prompts=tuple(f"{self.job_id} {i}" for i in range(self.samples)), seeds=(0,),
                       steps=self.steps, width=SIM_SIZE, height=SIM_SIZE, guidance=1.0, sampler="euler",
                       priority=self.priority, owner=self.owner)


@dataclass(frozen=True)
class SimNode:
    """A node as declared to the scheduler (`info`) and the speed its card really has."""

    info: NodeInfo
    true_speed: float


@dataclass(frozen=True)
class Churn:
    """Nodes leave after ~`up_s` and come back after ~`down_s` (exponential), from `seed`."""

    up_s: float = 1800.0
    down_s: float = 300.0
    seed: int = 7


@dataclass(frozen=True)
class Outcome:
    policy: str
    makespan: float
    loads: int
    tasks: int
    busy_seconds: dict[str, float]
    executed: float = 0.0  # sample-steps computed, lost work included
    needed: float = 0.0  # sample-steps the jobs needed
    departures: int = 0
    jobs_done: int = 0
    duplicated: int = 0  # outputs written more than once

    @property
    def redone(self) -> float:
        return (self.executed - self.needed) / self.needed if self.needed else 0.0


def stand_in_checkpoint(task: SegmentTask, step: int) -> bytes:
    """A valid checkpoint of the task's shard at `step`, with one-element tensors: what a simulated
    node hands back (the coordinator checks every checkpoint it receives)."""
    batch = len(task.samples)
    return checkpoint_codec.encode(Checkpoint(
        model=task.job.model, family="sim", sampler=task.job.sampler, step=step, steps=task.job.steps,
        guidance=task.job.guidance, width=task.job.width, height=task.job.height, frames=task.job.frames,
        seeds=tuple(s.seed for s in task.samples), latents=RawTensor("float32", (batch,), bytes(4 * batch)),
        conditioning={}, scheduler_state={}, rng_states=tuple(b"\0" for _ in range(batch))))


@dataclass
class _Node:
    node: SimNode
    up: bool = True
    models: OrderedDict[str, float] = field(default_factory=OrderedDict)  # model -> resident GiB, LRU order
    previous: tuple[SegmentTask, MemoryMode] | None = None


@dataclass
class _Running:
    node: str
    task: SegmentTask
    end_at: float
    seconds: float
    denoise: float


class SimExecutor:
    """`Executor` over simulated nodes with a virtual clock: `wait` jumps to the next thing that
    happens (a segment ends, a job arrives, a node leaves or returns)."""

    def __init__(self, nodes: Sequence[SimNode], jobs: Sequence[SimJob], churn: Churn | None = None) -> None:
        self.now = 0.0
        self.runs = {n.info.name: _Node(n) for n in nodes}
        self.jobs = {j.job_id: j for j in jobs}
        self.arrivals = sorted({j.arrival for j in jobs})
        self.running: dict[int, _Running] = {}
        self.handles = itertools.count()
        self.progress = {(j.job_id, s): 0 for j in jobs for s in range(j.samples)}
        self.last_node: dict[str, str] = {}
        self.loads = self.tasks = self.departures = 0
        self.executed = 0.0
        self.busy_seconds = {name: 0.0 for name in self.runs}
        self.coordinator: Coordinator | None = None
        self.violations: list[str] = []
        self.answers: list[tuple[int, object]] = []  # probe answers for the next `wait`
        self.churn = churn
        self.rng = random.Random(churn.seed if churn else 0)
        self.flips: list[tuple[float, str]] = []
        if churn is not None:
            for name in self.runs:
                heapq.heappush(self.flips, (self.rng.expovariate(1 / churn.up_s), name))

    def nodes(self) -> list[NodeInfo]:
        return [r.node.info for r in self.runs.values()]

    def submit(self, node: str, task: SegmentTask) -> object:
        run = self.runs[node]
        if not run.up:
            raise NodeLost(node, "it left the farm")
        job = self.jobs[job_of_shard(task.shard_id)]
        mode = MemoryMode(task.memory_mode)
        batch = len(task.samples)
        need = costmodel.shard_peak_gib(job.shape, batch, mode)
        self._check(need <= costmodel.usable_gib(run.node.info.vram_gib) + 1e-9, f"over budget on {node}")
        for s in task.samples:
            key = (job.job_id, s.index)
            self._check(self.progress[key] == task.start, f"steps of {key} out of order or run twice")
            self.progress[key] = -1  # running
        load = self._prepare(run, job, need)
        denoise = (task.end - task.start) * reference_step_seconds(job.shape, batch) / run.node.true_speed
        if mode.streamed:  # group offload moves the denoiser's blocks over PCIe every step
            denoise += (task.end - task.start) * streamed_step_seconds(job.shape)
        seconds = load + self._offload_seconds(job, task, mode, run.previous) + DISPATCH_S + denoise
        if task.start > 0 and self.last_node.get(task.shard_id) != node:
            seconds += HANDOFF_S
        if task.last:
            seconds += reference_decode_seconds(job.shape, batch, mode.tiled) / run.node.true_speed
        run.previous = (task, mode)
        self.last_node[task.shard_id] = node
        self.busy_seconds[node] += seconds
        self.tasks += 1
        handle = next(self.handles)
        self.running[handle] = _Running(node, task, self.now + seconds, seconds, denoise)
        return handle

    def _check(self, ok: bool, violation: str) -> None:
        """A schedule that breaks the rules: `simulate` raises it (the coordinator would only log it)."""
        if not ok:
            self.violations.append(violation)
            raise AssertionError(violation)

    def _prepare(self, run: _Node, job: SimJob, need: float) -> float:
        """Make room for the model on the node (an LRU bounded by its budget); the load seconds."""
        loaded = job.model not in run.models
        run.models[job.model] = job.shape.profile.weights_gib
        run.models.move_to_end(job.model)
        budget = costmodel.usable_gib(run.node.info.vram_gib)
        while len(run.models) > 1 and sum(run.models.values()) - run.models[job.model] + need > budget:
            run.models.popitem(last=False)
        self.loads += loaded
        return load_seconds(job.shape) if loaded else 0.0

    @staticmethod
    def _offload_seconds(job: SimJob, task: SegmentTask, mode: MemoryMode,
                         previous: tuple[SegmentTask, MemoryMode] | None) -> float:
        """PCIe time under model CPU offload: a component moves onto the GPU when it runs and off when
        another runs, so the denoiser stays put between segments of the same model on one node (group
        offload streams its blocks every step instead: counted with the steps)."""
        if not mode.offload or mode.streamed:
            return 0.0
        profile = job.shape.profile
        stays = (previous is not None and previous[0].job.model == task.job.model and previous[1].offload
                 and not previous[0].last and task.start > 0)
        moved = 0.0 if stays else sum(c.weights_gib for c in profile.role(Role.DENOISER))
        if task.start == 0:
            moved += sum(c.weights_gib for c in profile.role(Role.TEXT))
        if task.last:
            moved += sum(c.weights_gib for c in profile.role(Role.DECODER))
        return moved / OFFLOAD_GIB_PER_S

    def wait(self, timeout: float) -> list[tuple[object, SegmentResult | BaseException]]:
        if self.answers:
            answers, self.answers = self.answers, []
            return answers  # type: ignore[return-value]
        end = min(((r.end_at, h) for h, r in self.running.items()), default=(float("inf"), -1))
        arrival = next((a for a in self.arrivals if a > self.now), float("inf"))
        flip = self.flips[0][0] if self.flips else float("inf")
        if not self.running and arrival == float("inf") and (not self.flips or self._all_done()):
            return []
        if flip < end[0] and flip <= arrival:
            return self._flip()
        if arrival < end[0]:
            self.now = arrival
            return []
        self.now, handle = end
        r = self.running.pop(handle)
        self.executed += (r.task.end - r.task.start) * len(r.task.samples)
        job = self.jobs[job_of_shard(r.task.shard_id)]
        for s in r.task.samples:
            self.progress[(job.job_id, s.index)] = r.task.end
        common = dict(shard_id=r.task.shard_id, index=r.task.index, node=r.node, gpu="simulated", seconds=r.seconds,
                      denoise_seconds=r.denoise, memory_mode=r.task.memory_mode,
                      loaded=tuple(self.runs[r.node].models))
        if r.task.last:
            size = SIM_SIZE * SIM_SIZE * 3
            return [(handle, SegmentResult(**common, images=tuple(bytes(size) for _ in r.task.samples)))]
        return [(handle, SegmentResult(**common, checkpoint=stand_in_checkpoint(r.task, r.task.end)))]

    def _all_done(self) -> bool:
        return all(step == self.jobs[j].steps for (j, _), step in self.progress.items())

    def _flip(self) -> list[tuple[object, SegmentResult | BaseException]]:
        assert self.churn is not None and self.coordinator is not None
        self.now, name = heapq.heappop(self.flips)
        run = self.runs[name]
        run.up = not run.up
        mean = self.churn.up_s if run.up else self.churn.down_s
        heapq.heappush(self.flips, (self.now + self.rng.expovariate(1 / mean), name))
        if run.up:
            run.models.clear()
            self.coordinator.node_joined(run.node.info)
            return []
        self.departures += 1
        out: list[tuple[object, SegmentResult | BaseException]] = []
        for h, r in list(self.running.items()):
            if r.node == name:  # the work done so far is lost with the node
                done = (self.now - (r.end_at - r.seconds)) / r.seconds * (r.task.end - r.task.start)
                self.executed += max(0.0, done) * len(r.task.samples)
                for s in r.task.samples:
                    self.progress[(job_of_shard(r.task.shard_id), s.index)] = r.task.start
                del self.running[h]
                out.append((h, NodeLost(name, "it left the farm")))
        self.coordinator.node_left(name, "it left the farm")
        return out

    def probe(self, node: str) -> object:
        """Answered at the next `wait`, at once: a node that is down answers NodeLost."""
        handle = next(self.handles)
        self.answers.append((handle, True if self.runs[node].up else NodeLost(node, "it left the farm")))
        return handle

    def step_events(self) -> list:
        return []

    def interrupt(self, node: str) -> None:
        """Simulated segments run to their end."""

    def shutdown(self) -> None:
        """Nothing to stop."""


class CountingSink:
    """An `OutputSink` that writes nothing and counts what it was asked to write."""

    def __init__(self) -> None:
        self.writes: Counter[tuple[str, int]] = Counter()

    def write(self, job_id: str, job: JobSpec, sample: Sample, rgb: bytes, runs: Sequence[StepRun]) -> Path:
        self.writes[(job_id, sample.index)] += 1
        return Path(job_id) / f"{sample.index}"


def simulate(nodes: Sequence[SimNode], jobs: Sequence[SimJob], decide: Decide = decide, name: str = "farm",
             churn: Churn | None = None, segment_seconds: float = 30.0) -> Outcome:
    """Run `jobs` on `nodes` with the real coordinator deciding with `decide`, until every sample is
    written; raises AssertionError when a schedule breaks a budget or runs a step twice, and
    RuntimeError when it stalls."""
    executor = SimExecutor(nodes, jobs, churn)
    sink = CountingSink()
    coordinator = Coordinator(executor, sink, clock=lambda: executor.now, decide=decide,
                              segment_seconds=segment_seconds, max_failures=10**9)
    executor.coordinator = coordinator
    pending = sorted(jobs, key=lambda j: (j.arrival, j.job_id))
    idle_rounds = 0
    while True:
        while pending and pending[0].arrival <= executor.now:
            job = pending.pop(0)
            coordinator.submit(job.spec(), job.job_id, job.shape)
        before = (executor.now, executor.tasks, len(coordinator.state.jobs))
        coordinator.tick(0)
        if executor.violations:
            raise AssertionError(f"{name}: {executor.violations[0]}")
        states = [j.status for j in coordinator.state.jobs.values()]
        if not pending and len(states) == len(jobs) and all(s in ENDED for s in states):
            break
        idle_rounds = idle_rounds + 1 if (executor.now, executor.tasks, len(coordinator.state.jobs)) == before else 0
        if idle_rounds > 3:
            undone = sum(1 for j, s in executor.progress.items() if s != executor.jobs[j[0]].steps)
            raise RuntimeError(f"{name} stalled with {undone} samples unfinished")
    needed = sum(j.samples * j.steps for j in jobs)
    done = sum(1 for j in coordinator.state.jobs.values() if j.status.value == "done")
    duplicated = sum(n - 1 for n in sink.writes.values() if n > 1)
    return Outcome(name, executor.now, executor.loads, executor.tasks, executor.busy_seconds, executor.executed,
                   needed, executor.departures, done, duplicated)


@dataclass(frozen=True)
class LowerBound:
    """No schedule can beat any of these (seconds); `value` is the largest.

    work      all work / all true speed
    eligible  for each job, the work of jobs that fit only where it fits, over those nodes' speed
    sample    the longest single sample on the fastest node that holds it (after its arrival)
    Work per sample is counted at the largest batch any node holds, with no load, transfer or
    hand-off, so the bound is never above the true optimum.
    """

    work: float
    eligible: float
    sample: float

    @property
    def value(self) -> float:
        return max(self.work, self.eligible, self.sample)


def sample_work(job: SimJob, nodes: Sequence[SimNode]) -> float:
    """Reference-seconds of one sample at the most efficient batch any node holds."""
    fits = [costmodel.best_fit(job.shape, n.info.vram_gib, job.samples) for n in nodes]
    batch = max(f.batch for f in fits if f is not None)
    step = reference_step_seconds(job.shape, batch) / batch
    return job.steps * step + reference_decode_seconds(job.shape, 1, tiled=False)


def lower_bound(nodes: Sequence[SimNode], jobs: Sequence[SimJob]) -> LowerBound:
    eligible = {j.job_id: frozenset(n.info.name for n in nodes if costmodel.best_fit(j.shape, n.info.vram_gib, 1))
                for j in jobs}
    speed = {n.info.name: n.true_speed for n in nodes}
    work = {j.job_id: sample_work(j, nodes) for j in jobs}
    total = sum(work[j.job_id] * j.samples for j in jobs) / sum(speed.values())
    by_set = max(
        sum(work[j.job_id] * j.samples for j in jobs if eligible[j.job_id] <= eligible[j0.job_id])
        / sum(speed[n] for n in eligible[j0.job_id])
        for j0 in jobs
    )
    longest = max(j.arrival + work[j.job_id] / max(speed[n] for n in eligible[j.job_id]) for j in jobs)
    return LowerBound(total, by_set, longest)
