"""A discrete-event simulation of a farm (pure): a cluster, a workload, and who places what.

`bench/scheduler.py` runs it to compare this scheduler with simpler placements, and the property
tests run it to check a whole schedule end to end. A policy sees what a coordinator sees (declared
speeds, which node is busy, which models each holds, what finished and how long it took); the engine
alone knows each card's true speed. Time on a node for a task is:

    model load (when the node does not hold the model; disk speed, counted as a load)
    + offload transfers (components moved over PCIe in an offload memory mode)
    + a fixed dispatch cost per task, and a checkpoint hand-off when the shard moved between nodes
    + denoising steps (`speed.reference_step_seconds` / true speed)
    + VAE decode after the last step.

The engine checks every task against the node's budget and that every step of every sample runs
exactly once, in order, so a policy cannot cheat its way to a short makespan.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from farm.contracts.domain import NodeInfo, NodeState, ReadySegment, Shard
from farm.core import costmodel, planner
from farm.core import order as queue
from farm.core.costmodel import MemoryMode, Role, Shape
from farm.core.speed import OFFLOAD_GIB_PER_S, SpeedBook, load_seconds, reference_decode_seconds, reference_step_seconds

DISPATCH_S = 0.3  # handing a task to a node's actor and getting its result back
HANDOFF_S = 0.5  # moving a checkpoint (latents, scheduler and RNG state) to another node


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


@dataclass(frozen=True)
class SimNode:
    """A node as declared to the scheduler (`info`) and the speed its card really has."""

    info: NodeInfo
    true_speed: float


@dataclass(frozen=True)
class Task:
    """Steps [start, end) of a batch of samples of one job, held in `mode`; `shard` names the batch."""

    job: SimJob
    shard: str
    samples: tuple[int, ...]
    start: int
    end: int
    mode: MemoryMode
    need_gib: float


@dataclass(frozen=True)
class View:
    """What a policy may look at when it decides: the declared node table and its live state."""

    nodes: tuple[NodeInfo, ...]
    busy: frozenset[str]
    loaded: dict[str, frozenset[str]]

    def states(self) -> list[NodeState]:
        return [NodeState(n, n.name in self.busy, True, self.loaded[n.name]) for n in self.nodes]


class Policy(Protocol):
    name: str

    def admit(self, job: SimJob, now: float, view: View) -> None: ...

    def assign(self, now: float, view: View) -> list[tuple[str, Task]]: ...

    def finished(self, node: str, task: Task, seconds: float, denoise_seconds: float) -> None: ...


@dataclass(frozen=True)
class Outcome:
    policy: str
    makespan: float
    loads: int
    tasks: int
    busy_seconds: dict[str, float]


@dataclass
class _NodeRun:
    node: SimNode
    models: OrderedDict[str, float] = field(default_factory=OrderedDict)  # model -> resident GiB, LRU order
    previous: Task | None = None


def _prepare(run: _NodeRun, task: Task) -> tuple[float, bool]:
    """Make room for the task's model on the node (an LRU bounded by its budget); seconds and whether
    it was a load."""
    model, shape = task.job.model, task.job.shape
    loaded = model not in run.models
    run.models[model] = shape.profile.weights_gib
    run.models.move_to_end(model)
    budget = costmodel.usable_gib(run.node.info.vram_gib)
    while len(run.models) > 1 and sum(run.models.values()) - run.models[model] + task.need_gib > budget:
        run.models.popitem(last=False)
    return (load_seconds(shape) if loaded else 0.0), loaded


def _offload_seconds(task: Task, previous: Task | None) -> float:
    """PCIe time under model CPU offload: a component moves onto the GPU when it runs and off when
    another runs, so the denoiser stays put between segments of the same model on one node."""
    if not task.mode.offload:
        return 0.0
    profile = task.job.shape.profile
    stays = (previous is not None and previous.job.model == task.job.model and previous.mode.offload
             and previous.end < previous.job.steps and task.start > 0)
    moved = 0.0 if stays else sum(c.weights_gib for c in profile.role(Role.DENOISER))
    if task.start == 0:
        moved += sum(c.weights_gib for c in profile.role(Role.TEXT))
    if task.end == task.job.steps:
        moved += sum(c.weights_gib for c in profile.role(Role.DECODER))
    return moved / OFFLOAD_GIB_PER_S


def simulate(policy: Policy, nodes: Sequence[SimNode], jobs: Sequence[SimJob]) -> Outcome:
    """Run `jobs` on `nodes` under `policy` until every sample is rendered; raises AssertionError when
    the policy breaks a budget or runs a step twice, and RuntimeError when it stalls."""
    runs = {n.info.name: _NodeRun(n) for n in nodes}
    infos = tuple(n.info for n in nodes)
    progress = {(j.job_id, s): 0 for j in jobs for s in range(j.samples)}
    last_node: dict[str, str] = {}
    busy: set[str] = set()
    events: list[tuple[float, int, int, object]] = []
    order = 0
    for job in sorted(jobs, key=lambda j: j.arrival):
        heapq.heappush(events, (job.arrival, 0, order, job))
        order += 1
    loads = tasks = 0
    busy_seconds = {name: 0.0 for name in runs}
    now = 0.0

    def view() -> View:
        return View(infos, frozenset(busy), {name: frozenset(r.models) for name, r in runs.items()})

    while events:
        now = events[0][0]
        while events and events[0][0] == now:
            _, kind, _, payload = heapq.heappop(events)
            if kind == 0:
                assert isinstance(payload, SimJob)
                policy.admit(payload, now, view())
            else:
                name, task, seconds, denoise = payload  # type: ignore[misc]
                busy.discard(name)
                for s in task.samples:
                    progress[(task.job.job_id, s)] = task.end
                policy.finished(name, task, seconds, denoise)
        for name, task in policy.assign(now, view()):
            run = runs[name]
            assert name not in busy, f"{policy.name}: {name} given two tasks at once"
            assert task.need_gib <= costmodel.usable_gib(run.node.info.vram_gib) + 1e-9, f"{policy.name}: over budget on {name}"
            for s in task.samples:
                assert progress[(task.job.job_id, s)] == task.start, f"{policy.name}: steps of a sample out of order"
                progress[(task.job.job_id, s)] = -1  # running
            load, was_load = _prepare(run, task)
            loads += was_load
            batch = len(task.samples)
            speed = run.node.true_speed
            denoise = (task.end - task.start) * reference_step_seconds(task.job.shape, batch) / speed
            seconds = load + _offload_seconds(task, run.previous) + DISPATCH_S + denoise
            run.previous = task
            if task.start > 0 and last_node.get(task.shard) != name:
                seconds += HANDOFF_S
            if task.end == task.job.steps:
                seconds += reference_decode_seconds(task.job.shape, batch, task.mode.tiled) / speed
            last_node[task.shard] = name
            busy.add(name)
            busy_seconds[name] += seconds
            tasks += 1
            heapq.heappush(events, (now + seconds, 1, order, (name, task, seconds, denoise)))
            order += 1
    steps = {j.job_id: j.steps for j in jobs}
    undone = [key for key, step in progress.items() if step != steps[key[0]]]
    if undone:
        raise RuntimeError(f"{policy.name} stalled with {len(undone)} samples unfinished")
    return Outcome(policy.name, now, loads, tasks, busy_seconds)


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


@dataclass
class _ShardRun:
    shard: Shard
    job: SimJob
    next_index: int = 0
    running: bool = False

    @property
    def done(self) -> bool:
        return self.next_index >= len(self.shard.bounds)


class FarmPolicy:
    """This scheduler, wired the way a coordinator wires it:

    * plan: `planner.plan_queue` over every queued job's unstarted samples (learned speeds, queued
      home work, loaded models), whenever a job arrives or a node runs out of home work (the sign
      that the last plan's speeds were off);
    * every event: `queue.order_jobs` + `queue.order_ready` + `planner.plan_tick`;
    * every finished segment: `SpeedBook.observe`, and its GPU-seconds charged to the job's owner.
    """

    name = "farm"

    def __init__(self, segment_seconds: float = planner.SEGMENT_SECONDS) -> None:
        self.segment_seconds = segment_seconds
        self.speeds = SpeedBook()
        self.runs: dict[str, _ShardRun] = {}  # unfinished shards
        self.left: dict[str, int] = {}  # unfinished shards per job
        self.home_left: dict[str, int] = {}  # unfinished shards per home node
        self.jobs: dict[str, SimJob] = {}
        self.next_shard: dict[str, int] = {}
        self.queued: dict[str, queue.QueuedJob] = {}
        self.used: dict[str, float] = {}
        self.unplanned: dict[str, list[int]] = {}
        self.replan = False

    def admit(self, job: SimJob, now: float, view: View) -> None:
        self.jobs[job.job_id] = job
        self.next_shard[job.job_id] = 0
        self.left[job.job_id] = 0
        self.queued[job.job_id] = queue.QueuedJob(job.job_id, job.owner, job.priority, len(self.jobs))
        self.unplanned[job.job_id] = list(range(job.samples))
        self.replan = True

    def _drop(self, run: _ShardRun) -> None:
        del self.runs[run.shard.id]
        self.left[run.job.job_id] -= 1
        self.home_left[run.shard.home] -= 1

    def _plan(self, view: View) -> None:
        """Take back every unstarted shard and plan all unplaced samples again in one go."""
        for run in list(self.runs.values()):
            if run.next_index == 0 and not run.running:
                self.unplanned.setdefault(run.job.job_id, []).extend(run.shard.sample_indices)
                self._drop(run)
        started = [(r.shard, r.job.shape, r.shard.bounds[r.next_index][0]) for r in self.runs.values()]
        context = planner.PlanContext(
            speeds=self.speeds,
            segment_seconds=self.segment_seconds,
            backlog=planner.backlog_seconds(started, view.nodes, self.speeds),
            loaded=view.loaded,
        )
        demands = []
        for job_id in queue.order_jobs(list(self.queued.values()), self.used):
            if self.unplanned.get(job_id):
                job = self.jobs[job_id]
                samples = tuple(sorted(self.unplanned.pop(job_id)))
                demands.append((job_id, planner.Demand(job.model, job.shape, job.steps, samples, job.priority,
                                                       self.next_shard[job_id])))
        by_name = {n.name: n for n in view.nodes}
        for job_id, shards in planner.plan_queue(demands, view.nodes, context=context).items():
            job = self.jobs[job_id]
            planned = sum(planner.shard_seconds(s, job.shape, 0, by_name[s.home], self.speeds) for s in shards)
            self.queued[job_id] = replace(self.queued[job_id], gpu_seconds=planned)
            self.next_shard[job_id] += len(shards)
            self.left[job_id] += len(shards)
            for shard in shards:
                self.runs[shard.id] = _ShardRun(shard, job)
                self.home_left[shard.home] = self.home_left.get(shard.home, 0) + 1

    def assign(self, now: float, view: View) -> list[tuple[str, Task]]:
        if self.replan:
            self._plan(view)
            self.replan = False
        ready = [
            ReadySegment(r.shard.id, r.next_index, r.shard.home, r.shard.need_gib, r.job.job_id, r.job.model,
                         r.job.priority, r.shard.needs)
            for r in self.runs.values() if not r.running
        ]
        if not ready:
            return []
        ready = queue.order_ready(ready, queue.order_jobs(list(self.queued.values()), self.used))
        out = []
        for a in planner.plan_tick(ready, view.states()):
            run = self.runs[a.shard_id]
            run.running = True
            start, end = run.shard.bounds[a.index]
            mode = a.memory_mode or run.shard.memory_mode
            need = dict(run.shard.needs)[mode]
            out.append((a.node, Task(run.job, run.shard.id, run.shard.sample_indices, start, end, MemoryMode(mode), need)))
        return out

    def finished(self, node: str, task: Task, seconds: float, denoise_seconds: float) -> None:
        run = self.runs[task.shard]
        run.running = False
        run.next_index += 1
        self.speeds = self.speeds.observe(node, task.job.shape, len(task.samples), task.end - task.start, denoise_seconds)
        self.used[task.job.owner] = self.used.get(task.job.owner, 0.0) + seconds
        if run.done:
            self._drop(run)
            if not self.left[task.job.job_id]:
                del self.queued[task.job.job_id]
        if not self.home_left.get(node) and any(r.next_index == 0 and not r.running for r in self.runs.values()):
            self.replan = True
