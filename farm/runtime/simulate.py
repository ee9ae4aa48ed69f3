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
once, in order, so no `decide` function can cheat its way to a short makespan. A probe of a node is
answered with the calibration its worker would measure (`SimExecutor.calibrate`), which seeds its
learned speed; a shard that resumes on another node (a migration or a loss) pays the hand-off. Nodes may leave and
come back (`Churn`): a node that leaves loses the segment it was running, as when a PC dies.
`bench/scheduler.py` compares `farm.core.decide.decide` with the baselines of `farm.core.baselines`;
`bench/churn.py` measures work redone under churn.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from farm.contracts.domain import JobSpec, NodeInfo, Sample, SegmentResult, SegmentTask, StepRun
from farm.contracts.errors import NodeLost
from farm.contracts.ids import job_of_shard
from farm.core import assign, costmodel
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
CALIBRATION_STEPS = 4  # denoising steps a joining worker times to seed its learned speed
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
    handoffs: int = 0  # segments that resumed a shard on another node than its last (migrations, losses)

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
        self.loads = self.tasks = self.departures = self.handoffs = 0
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
        need = costmodel.shard_peak_gib(job.shape, batch, mode, self.roles(task))
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
        if task.checkpoint is not None and self.last_node.get(task.shard_id) != node:
            seconds += HANDOFF_S
            self.handoffs += 1
        if task.last:
            seconds += reference_decode_seconds(job.shape, batch, mode.tiled) / run.node.true_speed
        run.previous = (task, mode)
        self.last_node[task.shard_id] = node
        self.busy_seconds[node] += seconds
        self.tasks += 1
        handle = next(self.handles)
        self.running[handle] = _Running(node, task, self.now + seconds, seconds, denoise)
        return handle

    @staticmethod
    def roles(task: SegmentTask) -> frozenset[Role]:
        """The components a segment runs: the encoders (text, and an init image's) when it has no
        checkpoint yet, the denoiser when it runs steps, the decoder when it ends the shard (a
        decode-only segment: that alone)."""
        ran = ((costmodel.ENCODE_ROLES, task.checkpoint is None), ({Role.DENOISER}, task.end > task.start),
               ({Role.DECODER}, task.last))
        return frozenset(role for roles, runs in ran if runs for role in roles)

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
        moved = 0.0 if stays or task.end == task.start else sum(c.weights_gib for c in profile.role(Role.DENOISER))
        if task.checkpoint is None:  # it encodes
            moved += sum(c.weights_gib for c in profile.components if c.role in costmodel.ENCODE_ROLES)
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
        """Answered at the next `wait`, at once: a node that is down answers NodeLost; one that is up,
        its calibration (`calibrate`)."""
        handle = next(self.handles)
        run = self.runs[node]
        self.answers.append((handle, self.calibrate(run) if run.up else NodeLost(node, "it left the farm")))
        return handle

    @staticmethod
    def calibrate(run: _Node) -> float:
        """What a worker measures at join: CALIBRATION_STEPS steps of the reference image model, timed
        on its card and divided by their reference time (the card's true seconds per reference-second;
        the steps take under a second, counted as part of the probe)."""
        shape = Shape("sd15", 512, 512)
        seconds = CALIBRATION_STEPS * reference_step_seconds(shape, 1) / run.node.true_speed
        return seconds / (CALIBRATION_STEPS * reference_step_seconds(shape, 1))

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
                              segment_seconds=segment_seconds, max_failures=10**9,
                              max_unfinished_per_user=None)  # a workload, not users: no queue cap
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
                   needed, executor.departures, done, duplicated, executor.handoffs)


@dataclass(frozen=True)
class LowerBound:
    """No schedule can beat any of these (seconds); `value` is the largest.

    The work is cut into items that a schedule may spread over nodes however it likes (migration
    included): each job's denoising (its samples times its steps, in sample-steps) and its decodes
    (one per sample). Item i costs c[n][i] seconds per unit on node n at that node's best batch and
    memory mode (the cheapest per unit of every batch up to the job's samples and mode that fit its
    budget, streamed offload counted, at its true speed), and only nodes that hold a sample are
    eligible. If node n works T_n <= T seconds, then for any weights y on the nodes (y >= 0, sum 1):

        T >= sum_n y_n T_n >= sum_i amount_i * min over eligible n of y_n * c[n][i]

    (weak duality of the fractional assignment problem), so every y gives a bound:

    work      y proportional to true speed: total work over total speed at each node's best batch
    eligible  the same over each job's eligible nodes only, counting the jobs that fit only there
    weighted  the best y a short exponentiated-gradient ascent from those finds (the LP bound)
    sample    a job's longest sample with every step and the decode on its fastest eligible node at
              batch 1 (a sample is never split across steps in parallel), begun no sooner than the
              job's arrival and its model's load (every node starts empty)
    loads     the fractional assignment again (solved exactly), each node also paying the load of
              every model it runs any of: every node starts empty, so a schedule pays at least
              these loads (`farm.core.assign.least_makespan`, a mixed-integer program whose dual
              bound holds even when the solver stops early)

    Hand-offs, offload transfers, dispatch, and loads beyond the first of each model on each node
    are left out, so the bound is never above the true optimum (tests/test_lower_bound.py checks it
    against brute force on small cases, loads included). `without_loads` is the largest of the
    other four, which bench/scheduler.py prints beside it: the bound before loads were counted, but
    for the one load the longest sample waits for (on the benchmark's workloads that term never binds).
    """

    work: float
    eligible: float
    weighted: float
    sample: float
    loads: float = 0.0

    @property
    def without_loads(self) -> float:
        return max(self.work, self.eligible, self.weighted, self.sample)

    @property
    def value(self) -> float:
        return max(self.without_loads, self.loads)


def unit_seconds(job: SimJob, node: SimNode) -> tuple[float, float] | None:
    """(seconds per sample-step, seconds per decoded sample) of the job on the node at its best batch
    and memory mode; None when not one sample fits its budget."""
    step = decode = float("inf")
    for mode in costmodel.MODES:
        cap = costmodel.max_batch(job.shape, node.info.vram_gib, mode, job.samples)
        if cap == 0:
            continue
        streamed = streamed_step_seconds(job.shape) if mode.streamed else 0.0
        for batch in range(1, cap + 1):
            step = min(step, (reference_step_seconds(job.shape, batch) / node.true_speed + streamed) / batch)
        decode = min(decode, reference_decode_seconds(job.shape, 1, mode.tiled) / node.true_speed)
    return None if step == float("inf") else (step, decode)


def sample_seconds(job: SimJob, node: SimNode) -> float | None:
    """Seconds of one sample alone (batch 1) on the node in its fastest mode; None when it does not fit."""
    best = None
    for mode in costmodel.MODES:
        if costmodel.max_batch(job.shape, node.info.vram_gib, mode, 1) == 0:
            continue
        streamed = streamed_step_seconds(job.shape) if mode.streamed else 0.0
        t = job.steps * (reference_step_seconds(job.shape, 1) / node.true_speed + streamed)
        t += reference_decode_seconds(job.shape, 1, mode.tiled) / node.true_speed
        best = t if best is None else min(best, t)
    return best


def weighted_bound(amounts: Sequence[float], costs: Sequence[Sequence[float]], y: Sequence[float]) -> float:
    """sum_i amount_i * min_n y_n * costs[n][i] (an infinite cost: not eligible)."""
    return sum(a * min(y[n] * costs[n][i] for n in range(len(y)) if costs[n][i] < math.inf)
               for i, a in enumerate(amounts))


def lower_bound(nodes: Sequence[SimNode], jobs: Sequence[SimJob], rounds: int = 300) -> LowerBound:
    """The bounds of `LowerBound` for `jobs` (all fitting some node) on `nodes`."""
    units = [[unit_seconds(j, n) for j in jobs] for n in nodes]
    inf = float("inf")
    costs = [[c[0] if c else inf for c in row] + [c[1] if c else inf for c in row] for row in units]
    amounts = [j.samples * j.steps for j in jobs] + [j.samples for j in jobs]
    speeds = [n.true_speed for n in nodes]

    def normal(weights: Sequence[float]) -> list[float]:
        total = sum(weights)
        return [w / total for w in weights]

    work = weighted_bound(amounts, costs, normal(speeds))
    starts = [normal(speeds)]
    for j in range(len(jobs)):
        eligible = [units[n][j] is not None for n in range(len(nodes))]
        starts.append(normal([s if ok else 0.0 for s, ok in zip(speeds, eligible)]))
    eligible_bound = max(weighted_bound(amounts, costs, y) for y in starts)
    best = max(starts, key=lambda y: weighted_bound(amounts, costs, y))
    y = normal([w + 1e-3 / len(nodes) for w in best])  # every node keeps some weight, so it can grow
    weighted = weighted_bound(amounts, costs, best)
    for k in range(rounds):
        # a subgradient: the cost each node carries where it is the cheapest weighted choice
        grad = [0.0] * len(nodes)
        for i, a in enumerate(amounts):
            n = min((m for m in range(len(nodes)) if costs[m][i] < math.inf), key=lambda m: y[m] * costs[m][i])
            grad[n] += a * costs[n][i]
        value = sum(y[n] * grad[n] for n in range(len(nodes)))
        weighted = max(weighted, value)
        rate = 2.0 / (k + 10) ** 0.5
        top = max(grad)
        y = normal([w * math.exp(rate * g / top) for w, g in zip(y, grad)])
    longest = max(max(j.arrival, load_seconds(j.shape))
                  + min(t for n in nodes if (t := sample_seconds(j, n)) is not None) for j in jobs)
    # The same items for the program with loads: a job's steps (a sample's worth at a time for its
    # quick first plan) and its decodes, each paying the job's model load on a node that runs any.
    chunks = [j.steps for j in jobs] + [1] * len(jobs)
    items = []
    for i, (amount, job, chunk) in enumerate(zip(amounts, [*jobs, *jobs], chunks)):
        load = load_seconds(job.shape)
        prices = tuple(None if row[i] == math.inf else assign.Cost(row[i], 0.0, chunk, load) for row in costs)
        items.append(assign.Item(amount, job.model, prices))
    return LowerBound(work, eligible_bound, weighted, longest, assign.least_makespan(items))
