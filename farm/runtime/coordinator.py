"""The coordinator: owns the queue, asks the planner what runs where, and hands segments and their
checkpoints between nodes until every sample of every job is written.

It implements `FarmService` (the control contract of the CLI, the dashboard and the gRPC API) and
imports no Ray and no torch: nodes are reached through an `Executor`, outputs through an
`OutputSink`. One `tick` collects finished segments, applies them, and dispatches new ones; `start`
runs ticks on a thread, `render` runs them until one job is final (the embedded CLI).

Nothing a node does can lose work: a failed segment goes back to the queue with the checkpoint it
started from (at most that one segment is redone), a lost node's shards resume on other nodes, and a
paused node checkpoints at its next step boundary and hands the rest of its segment back.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

from farm.contracts.control import Event, JobView, NodeShare, NodeStatus, NodeView, ShardView
from farm.contracts.domain import (
    JobSpec,
    JobStatus,
    NodeInfo,
    NodeState,
    NodeTally,
    ReadySegment,
    SegmentResult,
    SegmentTask,
    Shard,
    StepRun,
)
from farm.contracts.errors import InvalidInput, NodeLost, NotFound
from farm.contracts.ids import job_of_shard, new_job_id
from farm.contracts.ports import Executor, OutputSink
from farm.core import order as queue
from farm.core import planner
from farm.core.speed import SpeedBook
from farm.core.transitions import FINAL, transition
from farm.jobs import demand
from farm.jobs.catalog import get_model
from farm.runtime.store import Store, StoredJob

# A node that fails segments of one job this many times gets no more of that job's segments.
BLOCKLIST_AFTER = 3
EVENTS_KEPT = 10_000


@dataclass
class ShardRun:
    """A shard's progress: the next segment, the step it starts from, its checkpoint."""

    shard: Shard
    next_index: int = 0
    step: int = 0  # next step to run: a paused segment resumes mid-way
    checkpoint: bytes | None = None
    runs: list[StepRun] = field(default_factory=list)
    node: str = ""  # the node running it now
    progress: int = 0  # the last step a node reported for the running segment

    @property
    def done(self) -> bool:
        return self.next_index >= len(self.shard.bounds)

    @property
    def steps_done(self) -> int:
        return max(self.step, self.progress) * self.shard.batch


@dataclass
class JobState:
    id: str
    spec: JobSpec
    seq: int
    submitted_at: float
    status: JobStatus = JobStatus.QUEUED
    shards: dict[str, ShardRun] = field(default_factory=dict)
    outputs: list[Path] = field(default_factory=list)
    tallies: dict[str, NodeTally] = field(default_factory=dict)
    started_at: float | None = None
    finished_at: float | None = None
    error: str = ""
    failures: int = 0
    node_failures: dict[str, int] = field(default_factory=dict)
    next_shard: int = 0  # index of the next shard id: re-planned shards get new, unique ids

    @property
    def blocked(self) -> set[str]:
        return {n for n, count in self.node_failures.items() if count >= BLOCKLIST_AFTER}


@dataclass
class NodeRuntime:
    info: NodeInfo
    running: tuple[str, str] | None = None  # (job id, shard id)
    paused: str = ""  # why, when paused
    draining: bool = False
    lost: bool = False
    loaded: set[str] = field(default_factory=set)

    @property
    def status(self) -> NodeStatus:
        if self.lost:
            return NodeStatus.OFFLINE
        if self.paused:
            return NodeStatus.PAUSED
        if self.draining:
            return NodeStatus.DRAINING
        return NodeStatus.BUSY if self.running else NodeStatus.IDLE

    @property
    def takes_work(self) -> bool:
        return not (self.lost or self.paused or self.draining)


class Coordinator:
    """The farm's queue and scheduler loop (a `FarmService`)."""

    def __init__(self, executor: Executor, sink: OutputSink, *, max_failures: int = 5,
                 max_segment_steps: int | None = planner.DEFAULT_SEGMENT_STEPS,
                 segment_seconds: float = planner.SEGMENT_SECONDS, clock: Callable[[], float] = time.time,
                 store: Store | None = None) -> None:
        self.executor = executor
        self.sink = sink
        self.max_failures = max_failures
        self.max_segment_steps = max_segment_steps
        self.segment_seconds = segment_seconds
        self.clock = clock
        self.speeds = SpeedBook()
        self.used: dict[str, float] = {}  # GPU-seconds per owner, for fair share
        self.jobs: dict[str, JobState] = {}
        self.nodes = {n.name: NodeRuntime(n) for n in executor.nodes()}
        self.inflight: dict[object, tuple[str, str, str, int, int]] = {}  # handle -> job, shard, node, start, end
        # The latest preview PNG of each (job id, sample index) still in progress, for dashboards.
        self.previews: dict[tuple[str, int], bytes] = {}
        self._seq = 0
        self._events: deque[Event] = deque(maxlen=EVENTS_KEPT)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._replan = False
        self.store = store
        if store is not None:
            self._events.extend(store.load_events(EVENTS_KEPT))
            for stored in store.load_jobs():
                self.jobs[stored.id] = self._restore(stored)
                self._seq = max(self._seq, stored.seq)

    def _restore(self, stored: StoredJob) -> JobState:
        """A job as the store left it: segments that were running when the head stopped are simply
        not running now, and resume from the shard's last stored checkpoint."""
        job = JobState(stored.id, stored.spec, stored.seq, stored.submitted_at, stored.status,
                       started_at=stored.started_at, finished_at=stored.finished_at, error=stored.error,
                       failures=stored.failures, node_failures=dict(stored.node_failures),
                       outputs=[Path(p) for _, p in stored.outputs], tallies={n: NodeTally() for n in self.nodes})
        for s in stored.shards:
            run = ShardRun(s.shard, s.next_index, s.step, s.checkpoint, list(s.runs), progress=s.step)
            job.shards[s.shard.id] = run
            job.next_shard = max(job.next_shard, int(s.shard.id.removeprefix(f"{stored.id}/s")) + 1)
            for r in s.runs:
                tally = job.tallies.setdefault(r.node, NodeTally())
                tally.segments += 1
                tally.steps += (r.end - r.start) * s.shard.batch
                tally.shard_ids.add(s.shard.id)
                tally.shards = len(tally.shard_ids)
            if run.done and s.runs:
                job.tallies[s.runs[-1].node].samples += s.shard.batch
        return job

    def _save(self, job: JobState) -> None:
        if self.store is not None:
            self.store.update_job(job.id, spec=job.spec, seq=job.seq, status=job.status, started_at=job.started_at,
                                  finished_at=job.finished_at, error=job.error, failures=job.failures,
                                  node_failures=job.node_failures)

    # ----- events -------------------------------------------------------------------------------

    def _emit(self, kind: str, job_id: str = "", node: str = "", message: str = "") -> None:
        seq = self._events[-1].seq + 1 if self._events else 1
        event = Event(seq, self.clock(), kind, job_id, node, message)
        self._events.append(event)
        if self.store is not None:
            self.store.add_event(event)
        self._changed.notify_all()

    def events(self, after: int, timeout: float = 0.0) -> list[Event]:
        with self._changed:
            self._changed.wait_for(lambda: bool(self._events) and self._events[-1].seq > after, timeout)
            return [e for e in self._events if e.seq > after]

    # ----- jobs ---------------------------------------------------------------------------------

    def _job(self, job_id: str) -> JobState:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise NotFound("job", f"no job {job_id!r}") from None

    def _context(self, skip: Collection[str] = ()) -> planner.PlanContext:
        """What the planner knows: learned speeds, loaded models, and each node's queued home work
        (leaving out the shards in `skip`, which are being planned again)."""
        started = [
            (r.shard, demand.demand_of(j.spec, get_model(j.spec.model)).shape, r.step)
            for j in self.jobs.values() if j.status not in FINAL for r in j.shards.values()
            if not r.done and r.shard.id not in skip
        ]
        infos = [n.info for n in self.nodes.values() if not n.lost]
        return planner.PlanContext(
            speeds=self.speeds,
            segment_seconds=self.segment_seconds,
            backlog=planner.backlog_seconds(started, infos, self.speeds),
            loaded={name: frozenset(n.loaded) for name, n in self.nodes.items()},
        )

    def submit(self, spec: JobSpec, job_id: str | None = None) -> str:
        """Queue a validated job; refuses (DoesNotFit) one no node can hold, storing nothing."""
        with self._lock:
            if job_id is None:
                job_id = new_job_id(self.clock())
                while job_id in self.jobs:  # 16 random bits per second: rare, but a busy queue meets it
                    job_id = new_job_id(self.clock())
            infos = [n.info for n in self.nodes.values() if not n.lost]
            shards = demand.shard_job(job_id, spec, get_model(spec.model), infos, self.max_segment_steps,
                                       context=self._context())
            if job_id in self.jobs:
                raise InvalidInput("job", f"a job {job_id!r} exists already")
            self._seq += 1
            job = JobState(job_id, spec, self._seq, self.clock(), shards={s.id: ShardRun(s) for s in shards},
                           tallies={name: NodeTally() for name in self.nodes}, next_shard=len(shards))
            if self.store is not None:
                self.store.add_job(job_id, job.seq, spec, job.submitted_at, shards)
            self.jobs[job_id] = job
            self._replan = True  # place it together with every other job's unstarted work
            self._emit("job_submitted", job_id, message=f"{len(spec.samples())} samples in {len(shards)} shards")
            return job_id

    def _set_status(self, job: JobState, status: JobStatus, message: str = "") -> None:
        job.status = transition(job.id, job.status, status)
        if status in FINAL or status == JobStatus.FAILED:
            job.finished_at = self.clock()
        self._save(job)
        self._emit(f"job_{status}", job.id, message=message)

    def cancel_job(self, job_id: str) -> None:
        with self._lock:
            job = self._job(job_id)
            self._set_status(job, JobStatus.CANCELLED)
            for key in [k for k in self.previews if k[0] == job_id]:
                del self.previews[key]

    def pause_job(self, job_id: str) -> None:
        with self._lock:
            self._set_status(self._job(job_id), JobStatus.PAUSED)

    def resume_job(self, job_id: str) -> None:
        with self._lock:
            job = self._job(job_id)
            if job.status != JobStatus.PAUSED:
                raise InvalidInput("job", f"{job_id} is {job.status}, not paused")
            self._set_status(job, JobStatus.RUNNING if job.started_at else JobStatus.QUEUED)

    def retry_job(self, job_id: str) -> None:
        """Run a failed job again from its shards' last checkpoints (finished samples stay)."""
        with self._lock:
            job = self._job(job_id)
            if job.status != JobStatus.FAILED:
                raise InvalidInput("job", f"{job_id} is {job.status}; only a failed job can be retried")
            job.failures, job.node_failures, job.error = 0, {}, ""
            job.finished_at = None
            self._set_status(job, JobStatus.RUNNING if job.started_at else JobStatus.QUEUED)

    def set_priority(self, job_id: str, priority: int) -> None:
        if isinstance(priority, bool) or not isinstance(priority, int) or not -100 <= priority <= 100:
            raise InvalidInput("priority", f"must be a whole number from -100 to 100, got {priority!r}")
        with self._lock:
            job = self._job(job_id)
            job.spec = replace(job.spec, priority=priority)
            self._save(job)
            self._emit("job_moved", job_id, message=f"priority {priority}")

    def move_job(self, job_id: str, offset: int) -> None:
        """Move `offset` places (negative: earlier) among waiting jobs of the same priority."""
        with self._lock:
            job = self._job(job_id)
            peers = sorted((j for j in self.jobs.values()
                            if j.status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)
                            and j.spec.priority == job.spec.priority), key=lambda j: j.seq)
            if job not in peers:
                raise InvalidInput("job", f"{job_id} is {job.status}; only waiting jobs move")
            at = peers.index(job)
            to = min(max(at + offset, 0), len(peers) - 1)
            if to != at:
                seqs = [j.seq for j in peers]
                peers.insert(to, peers.pop(at))
                for peer, seq in zip(peers, seqs):
                    peer.seq = seq
                    self._save(peer)
                self._emit("job_moved", job_id, message=f"position {at + 1} -> {to + 1}")

    def _queue_order(self) -> list[str]:
        """Ids of the waiting jobs in queue order: priority, then fair share, then first in first out."""
        waiting = [j for j in self.jobs.values() if j.status in (JobStatus.QUEUED, JobStatus.RUNNING)]
        return queue.order_jobs([queue.QueuedJob(j.id, j.spec.owner, j.spec.priority, j.seq) for j in waiting],
                                self.used)

    def _position(self, job_id: str) -> int:
        order = self._queue_order()
        return order.index(job_id) + 1 if job_id in order else 0

    def _view(self, job: JobState, position: int = 0) -> JobView:
        total = len(job.spec.samples()) * job.spec.steps
        done = sum(r.steps_done for r in job.shards.values())
        eta = None
        if job.started_at and done and job.status == JobStatus.RUNNING:
            eta = (self.clock() - job.started_at) / done * (total - done)
        return JobView(
            id=job.id, spec=job.spec, status=job.status, samples_done=len(job.outputs),
            samples_total=len(job.spec.samples()), steps_done=done, steps_total=total,
            submitted_at=job.submitted_at, position=position, started_at=job.started_at,
            finished_at=job.finished_at, eta_s=eta, error=job.error, outputs=tuple(str(p) for p in job.outputs),
            shards=tuple(ShardView(r.shard.id, r.shard.home, r.shard.sample_indices, r.shard.bounds,
                                   r.shard.bounds[-1][1] if r.done else max(r.step, r.progress), r.node,
                                   r.shard.memory_mode) for r in job.shards.values()),
            shares=tuple(NodeShare(name, t.samples, t.shards, t.segments, t.steps, t.seconds)
                         for name, t in job.tallies.items()),
        )

    def get_job(self, job_id: str) -> JobView:
        with self._lock:
            return self._view(self._job(job_id), self._position(job_id))

    def list_jobs(self) -> list[JobView]:
        with self._lock:
            position = {job_id: i + 1 for i, job_id in enumerate(self._queue_order())}
            return [self._view(j, position.get(j.id, 0)) for j in sorted(self.jobs.values(), key=lambda j: j.seq)]

    def preview(self, job_id: str, sample: int) -> bytes | None:
        with self._lock:
            self._job(job_id)
            return self.previews.get((job_id, sample))

    # ----- nodes --------------------------------------------------------------------------------

    def _node(self, name: str) -> NodeRuntime:
        try:
            return self.nodes[name]
        except KeyError:
            raise NotFound("node", f"no node {name!r}; nodes: {', '.join(sorted(self.nodes))}") from None

    def list_nodes(self) -> list[NodeView]:
        with self._lock:
            out = []
            for name, n in self.nodes.items():
                segment, step, total = "", 0, 0
                if n.running:
                    run = self.jobs[n.running[0]].shards[n.running[1]]
                    start, end = run.step, run.shard.bounds[run.next_index][1]
                    segment, step, total = f"{run.shard.id}#{run.next_index} steps {start}-{end}", run.progress, end
                out.append(NodeView(n.info, n.status, segment, step, total, loaded=tuple(sorted(n.loaded)),
                                    pause_reason=n.paused))
            return out

    def node_joined(self, info: NodeInfo) -> None:
        """A node (re)joins: a new PC, or one that crashed and came back (it holds no model now)."""
        with self._lock:
            node = self.nodes.get(info.name)
            if node is None:
                self.nodes[info.name] = NodeRuntime(info)
            else:
                node.info, node.lost, node.loaded = info, False, set()
            self._emit("node_joined", node=info.name, message=f"{info.vram_gib:g} GiB, speed {info.speed:g}")

    def node_left(self, name: str, reason: str) -> None:
        """A node is gone (its agent or raylet stopped answering); its segment comes back as NodeLost."""
        with self._lock:
            node = self._node(name)
            node.lost, node.loaded = True, set()
            self._emit("node_lost", node=name, message=reason)

    def pause_node(self, name: str, reason: str = "paused by operator") -> None:
        """No new work; a running segment checkpoints at its next step boundary and comes back."""
        with self._lock:
            node = self._node(name)
            node.paused = reason
            if node.running:
                self.executor.interrupt(name)
            self._emit("node_paused", node=name, message=reason)

    def drain_node(self, name: str) -> None:
        """Finish the running segment, then take no more work."""
        with self._lock:
            self._node(name).draining = True
            self._emit("node_draining", node=name)

    def resume_node(self, name: str) -> None:
        with self._lock:
            node = self._node(name)
            if node.lost:
                raise InvalidInput("node", f"{name} is offline")
            node.paused, node.draining = "", False
            self._emit("node_resumed", node=name)

    # ----- the loop -----------------------------------------------------------------------------

    def tick(self, timeout: float = 0.1) -> None:
        """Collect finished segments (waiting up to `timeout`), apply them, dispatch new ones."""
        finished = self.executor.wait(timeout)
        with self._lock:
            for event in self.executor.step_events():
                node = self.nodes.get(event.node)
                if node and node.running and node.running[1] == event.shard_id:
                    self.jobs[node.running[0]].shards[event.shard_id].progress = event.step
            for handle, outcome in finished:
                self._apply(handle, outcome)
            self._dispatch()

    def _plan_again(self) -> None:
        """Take back every unstarted shard of the waiting jobs and place all their samples at once
        (`planner.plan_queue`): jobs that fit few cards and long videos first, each later sample where
        it finishes first behind them. Runs when a job arrives or a node runs out of its own work."""
        self._replan = False
        unstarted = {
            job_id: [r for r in self.jobs[job_id].shards.values()
                     if r.next_index == 0 and r.step == 0 and not r.node and r.checkpoint is None]
            for job_id in self._queue_order()
        }
        demands = []
        for job_id, runs in unstarted.items():
            if runs:
                job = self.jobs[job_id]
                samples = tuple(sorted(i for r in runs for i in r.shard.sample_indices))
                need = demand.demand_of(job.spec, get_model(job.spec.model))
                demands.append((job_id, replace(need, samples=samples, first_shard=job.next_shard)))
        if not demands:
            return
        skip = {r.shard.id for runs in unstarted.values() for r in runs}
        infos = [n.info for n in self.nodes.values() if not n.lost]
        plans = planner.plan_queue(demands, infos, self.max_segment_steps, context=self._context(skip))
        for job_id, shards in plans.items():
            job = self.jobs[job_id]
            old = [r.shard.id for r in unstarted[job_id]]
            for shard_id in old:
                del job.shards[shard_id]
            job.shards.update({s.id: ShardRun(s) for s in shards})
            job.next_shard += len(shards)
            if self.store is not None:
                self.store.replace_shards(job_id, old, shards)

    def _dispatch(self) -> None:
        if self._replan:
            self._plan_again()
        order = self._queue_order()
        ready = [
            ReadySegment(r.shard.id, r.next_index, r.shard.home, r.shard.need_gib, job_id, j.spec.model,
                         j.spec.priority, r.shard.needs)
            for job_id in order for j in (self.jobs[job_id],) for r in j.shards.values() if not r.done and not r.node
        ]
        if not ready:
            return
        ready = queue.order_ready(ready, order)
        # Jobs that blocklisted some nodes are planned with those nodes looking busy; groups go in the
        # queue order of their first segment.
        groups: dict[frozenset[str], list[ReadySegment]] = {}
        for seg in ready:
            groups.setdefault(frozenset(self.jobs[queue.job_of(seg)].blocked), []).append(seg)
        taken: set[str] = set()
        for blocked, segs in groups.items():
            table = [NodeState(n.info, busy=n.running is not None or n.info.name in taken or n.info.name in blocked,
                               online=n.takes_work, loaded=frozenset(n.loaded)) for n in self.nodes.values()]
            for a in planner.plan_tick(segs, table):
                job = self.jobs[job_of_shard(a.shard_id)]
                self._start(job, job.shards[a.shard_id], a.node, a.memory_mode)
                taken.add(a.node)

    def _start(self, job: JobState, run: ShardRun, node: str, mode: str) -> None:
        samples = job.spec.samples()
        end = run.shard.bounds[run.next_index][1]
        task = SegmentTask(job.spec, run.shard.id, tuple(samples[i] for i in run.shard.sample_indices),
                           run.next_index, run.step, end, run.checkpoint, mode or run.shard.memory_mode)
        handle = self.executor.submit(node, task)
        self.inflight[handle] = (job.id, run.shard.id, node, run.step, end)
        run.node, run.progress = node, run.step
        self.nodes[node].running = (job.id, run.shard.id)
        if job.status == JobStatus.QUEUED:
            job.started_at = job.started_at or self.clock()
            self._set_status(job, JobStatus.RUNNING)
        self._emit("segment_started", job.id, node, f"{run.shard.id}#{run.next_index} steps {run.step}-{end}")

    def _apply(self, handle: object, outcome: SegmentResult | BaseException) -> None:
        job_id, shard_id, node_name, start, end = self.inflight.pop(handle)
        job, node = self.jobs[job_id], self.nodes[node_name]
        run = job.shards[shard_id]
        node.running, run.node, run.progress = None, "", run.step
        if isinstance(outcome, BaseException):
            self._failed(job, run, node, outcome)
            return
        node.loaded.add(job.spec.model)
        if job.status in FINAL:
            return  # cancelled while the segment ran: its result is not wanted
        reached = end if outcome.stopped_at is None else outcome.stopped_at
        self._record(job, run, outcome, start, reached)
        if outcome.stopped_at is not None:
            run.step, run.checkpoint = reached, outcome.checkpoint
            self._persist(run)
            self._emit("segment_paused", job.id, node.info.name, f"{shard_id} checkpointed at step {reached}")
            return
        run.next_index += 1
        run.step, run.checkpoint = end, outcome.checkpoint
        written = self._deliver(job, run, outcome) if run.done else []
        if run.done and not self._home_work(run.shard.home):
            self._replan = True  # that node ran out of its own work: the last plan's speeds were off
        self._persist(run, [(job.id, index, str(path)) for index, path in written])
        self._emit("segment_finished", job.id, node.info.name, f"{shard_id}#{outcome.index} in {outcome.seconds:.1f}s")
        if run.done and all(r.done for r in job.shards.values()):
            self._set_status(job, JobStatus.DONE, f"{len(job.outputs)} outputs")

    def _home_work(self, node: str) -> bool:
        return any(r.shard.home == node and not r.done for j in self.jobs.values()
                   if j.status in (JobStatus.QUEUED, JobStatus.RUNNING) for r in j.shards.values())

    def _persist(self, run: ShardRun, outputs: list[tuple[str, int, str]] = ()) -> None:
        if self.store is not None:
            self.store.advance_shard(run.shard.id, run.next_index, run.step, run.checkpoint, run.runs, list(outputs))

    def _record(self, job: JobState, run: ShardRun, result: SegmentResult, start: int, end: int) -> None:
        """Provenance, per-node tallies, learned speed and the owner's GPU-seconds."""
        if end > start:
            run.runs.append(StepRun(result.node, result.gpu, start, end, result.memory_mode))
            shape = demand.demand_of(job.spec, get_model(job.spec.model)).shape
            # Learn from the steps alone; a result without that timing (older node) counts whole.
            seconds = result.denoise_seconds or result.seconds
            self.speeds = self.speeds.observe(result.node, shape, run.shard.batch, end - start, seconds)
        tally = job.tallies.setdefault(result.node, NodeTally())
        tally.segments += 1
        tally.seconds += result.seconds
        tally.steps += (end - start) * run.shard.batch
        tally.shard_ids.add(run.shard.id)
        tally.shards = len(tally.shard_ids)
        self.used[job.spec.owner] = self.used.get(job.spec.owner, 0.0) + result.seconds
        for index, png in zip(run.shard.sample_indices, result.previews):
            self.previews[(job.id, index)] = png

    def _deliver(self, job: JobState, run: ShardRun, result: SegmentResult) -> list[tuple[int, Path]]:
        """Write the shard's outputs (each once: temp name, then rename) and count them."""
        samples = job.spec.samples()
        written = []
        for index, rgb in zip(run.shard.sample_indices, result.images, strict=True):
            self.previews.pop((job.id, index), None)
            path = self.sink.write(job.id, job.spec, samples[index], rgb, run.runs)
            job.outputs.append(path)
            written.append((index, path))
        job.tallies.setdefault(result.node, NodeTally()).samples += len(result.images)
        return written

    def _failed(self, job: JobState, run: ShardRun, node: NodeRuntime, error: BaseException) -> None:
        """The segment goes back to the queue with the checkpoint it started from."""
        name = node.info.name
        if isinstance(error, NodeLost):
            node.lost, node.loaded = True, set()
            self._emit("node_lost", job.id, name, str(error))
            return
        job.failures += 1
        job.node_failures[name] = job.node_failures.get(name, 0) + 1
        self._save(job)
        self._emit("segment_failed", job.id, name, f"{run.shard.id}: {error}")
        if job.status not in FINAL and job.failures >= self.max_failures:
            job.error = f"{job.failures} failed segments, last on {name}: {error}"
            self._set_status(job, JobStatus.FAILED, job.error)

    def render(self, spec: JobSpec, job_id: str | None = None,
               on_tick: Callable[[Coordinator, str], None] | None = None) -> JobView:
        """Submit a job and run the loop on this thread until it is done, failed or cancelled."""
        return self.finish(self.submit(spec, job_id), on_tick)

    def finish(self, job_id: str, on_tick: Callable[[Coordinator, str], None] | None = None) -> JobView:
        """Run the loop on this thread until `job_id` is done, failed or cancelled."""
        while True:
            self.tick()
            if on_tick is not None:
                on_tick(self, job_id)
            view = self.get_job(job_id)
            if view.status in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED):
                return view
            with self._lock:
                if not self.inflight and all(n.lost for n in self.nodes.values()):
                    job = self.jobs[job_id]
                    job.error = "every node is offline"
                    self._set_status(job, JobStatus.FAILED, job.error)

    def start(self) -> None:
        """Run the loop on a background thread (a head, or an embedded farm with a dashboard)."""
        def loop() -> None:
            while not self._stop.is_set():
                self.tick()

        self._thread = threading.Thread(target=loop, name="farm-coordinator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wait(self, job_id: str, timeout: float | None = None) -> JobView:
        """Block until a job is final (with `start` running the loop)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self.jobs[job_id].status not in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._changed.wait(timeout=left if left is not None else 1.0)
            return self.get_job(job_id)
