"""The one in-memory `FarmService` of the tests: control surfaces (gRPC, HTTP, CLI, agent links,
metrics, the dashboard) driven without Ray or a scheduler.

It holds plain views (`jobs`, `nodes`: tests may read and replace them) and refuses what the real
coordinator refuses, with the same errors: every job status change goes through
`farm.core.transitions.transition`, resume only from paused, retry only from failed, priorities in
-100..100, only waiting or paused jobs move, an offline node cannot be resumed, unknown ids and names
are `NotFound` naming the field. `tests/test_control_contract.py` runs the same scenarios against it
and a real `Coordinator`, so the two cannot drift apart. What it never does is run work: a job stays
where the controls (or the test, with `put_job`) leave it.

What tests do to it: `calls` records every control call as made (also the refused ones), `reads`
counts the reads, `emit` adds an event (waking a waiting long-poll), `put_job`/`put_node` change the
farm as the world would, `previews` holds preview PNGs, `down` makes every read fail with
`Unreachable` (a head that went away), and clearing `gate` makes `list_jobs` hang (a slow head).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import replace

from farm.contracts.control import OPERATOR_PAUSE, Event, JobView, NodeStatus, NodeView, OwnerPolicy, Pause
from farm.contracts.domain import JobSpec, JobStatus, NodeInfo
from farm.contracts.errors import InvalidInput, NotFound, Unreachable
from farm.core.apply import PRIORITY_RANGE
from farm.core.order import QueuedJob, order_jobs
from farm.core.transitions import WAITING, transition
from farm.runtime.output_files import read_output

DRAINING_REASON = "draining: finishes its segment, then takes no work"  # the coordinator's words


def default_nodes() -> list[NodeView]:
    """Two PCs: pc1 idle with a sensor and its owner's rules, pc2 (simulated) busy on a segment."""
    owner = OwnerPolicy(vram_cap_gib=10.0, pause_programs=("game.exe",))
    return [NodeView(NodeInfo("pc1", 12.0, gpu="RTX 3060"), NodeStatus.IDLE, temperature_c=51.0, policy=owner),
            NodeView(NodeInfo("pc2", 8.0, simulated=True), NodeStatus.BUSY, segment="j/s0#1 steps 4-8")]


class FakeFarm:
    """A `FarmService` over plain views; by default the two nodes of `default_nodes`, no jobs, no events."""

    def __init__(self, nodes: Iterable[NodeView] | None = None, jobs: Iterable[JobView] = (),
                 events: Iterable[Event] = (), clock: Callable[[], float] = time.time) -> None:
        self.nodes: dict[str, NodeView] = {n.info.name: n for n in (default_nodes() if nodes is None else nodes)}
        self.jobs: dict[str, JobView] = {j.id: j for j in jobs}
        self.log: list[Event] = list(events)
        self.previews: dict[tuple[str, int], bytes] = {}
        self.calls: list[tuple[object, ...]] = []
        self.init_images: dict[str, bytes] = {}  # img2img jobs' init images by their hash, as submitted
        self.reads: Counter[str] = Counter()
        self.down = ""  # when set, every read fails with this message, like a head that went away
        self.gate = threading.Event()  # list_jobs waits for it: clear it to play a slow head
        self.gate.set()
        self.clock = clock
        self._seq: dict[str, int] = {}  # queue order among jobs of one priority (the coordinator's `seq`)
        self._cv = threading.Condition(threading.RLock())

    # ----- what tests do to the farm ------------------------------------------------------------

    def emit(self, kind: str, job_id: str = "", node: str = "", message: str = "") -> Event:
        with self._cv:
            seq = self.log[-1].seq + 1 if self.log else 1
            event = Event(seq, self.clock(), kind, job_id, node, message)
            self.log.append(event)
            self._cv.notify_all()
            return event

    def put_job(self, view: JobView) -> None:
        with self._cv:
            self.jobs[view.id] = view

    def put_node(self, view: NodeView) -> None:
        with self._cv:
            self.nodes[view.info.name] = view

    # ----- FarmService: jobs --------------------------------------------------------------------

    def submit(self, spec: JobSpec, init_image: bytes | None = None) -> str:
        with self._cv:
            self.calls.append(("submit", spec))
            if init_image is not None:
                self.init_images[spec.init_image] = init_image
            n = len(self.jobs) + 1
            while f"j{n}" in self.jobs:
                n += 1
            job_id = f"j{n}"
            samples = len(spec.prompts) * len(spec.seeds)
            self.jobs[job_id] = JobView(job_id, spec, JobStatus.QUEUED, 0, samples, 0, samples * spec.steps,
                                        self.clock())
            self._renumber()
            self.emit("job_submitted", job_id, message=f"{samples} samples, {spec.model}")
            return job_id

    def list_jobs(self, after: str = "", limit: int | None = None) -> list[JobView]:
        self.gate.wait()
        with self._cv:
            self._check_up()
            self.reads["list_jobs"] += 1
            if not after and limit is None:
                return [self.jobs[j] for j in self._in_seq_order()]
            ids = sorted(j for j in self.jobs if j > after)
            return [self.jobs[j] for j in (ids if limit is None else ids[:limit])]

    def get_job(self, job_id: str) -> JobView:
        with self._cv:
            self._check_up()
            self.reads["get_job"] += 1
            return self._job(job_id)

    def cancel_job(self, job_id: str) -> None:
        with self._cv:
            self.calls.append(("cancel_job", job_id))
            self._set_status(job_id, JobStatus.CANCELLED)
            for key in [k for k in self.previews if k[0] == job_id]:
                del self.previews[key]

    def forget_job(self, job_id: str) -> None:
        with self._cv:
            self.calls.append(("forget_job", job_id))
            if self._job(job_id).status not in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED):
                raise InvalidInput("job", f"{job_id} is {self._job(job_id).status}: only an ended job can be removed")
            del self.jobs[job_id]

    def pause_job(self, job_id: str) -> None:
        with self._cv:
            self.calls.append(("pause_job", job_id))
            self._set_status(job_id, JobStatus.PAUSED)

    def resume_job(self, job_id: str) -> None:
        with self._cv:
            self.calls.append(("resume_job", job_id))
            job = self._job(job_id)
            if job.status != JobStatus.PAUSED:
                raise InvalidInput("job", f"{job_id} is {job.status}, not paused")
            self._set_status(job_id, JobStatus.RUNNING if job.started_at else JobStatus.QUEUED, "job_resumed")

    def retry_job(self, job_id: str) -> None:
        with self._cv:
            self.calls.append(("retry_job", job_id))
            job = self._job(job_id)
            if job.status != JobStatus.FAILED:
                raise InvalidInput("job", f"{job_id} is {job.status}; only a failed job can be retried")
            self._set_status(job_id, JobStatus.RUNNING if job.started_at else JobStatus.QUEUED, "job_retried",
                             error="")

    def set_priority(self, job_id: str, priority: int) -> None:
        with self._cv:
            self.calls.append(("set_priority", job_id, priority))
            lo, hi = PRIORITY_RANGE
            if isinstance(priority, bool) or not isinstance(priority, int) or not lo <= priority <= hi:
                raise InvalidInput("priority", f"must be a whole number from {lo} to {hi}, got {priority!r}")
            job = self._job(job_id)
            self.jobs[job_id] = replace(job, spec=replace(job.spec, priority=priority))
            self._renumber()
            self.emit("job_moved", job_id, message=f"priority {priority}")

    def move_job(self, job_id: str, offset: int) -> None:
        """Swap queue places among the waiting and paused jobs of the job's priority, as the coordinator does."""
        with self._cv:
            self.calls.append(("move_job", job_id, offset))
            job = self._job(job_id)
            movable = WAITING | {JobStatus.PAUSED}
            if job.status not in movable:
                raise InvalidInput("job", f"{job_id} is {job.status}; only waiting jobs move")
            order = self._in_seq_order()
            peers = [j for j in order
                     if self.jobs[j].status in movable and self.jobs[j].spec.priority == job.spec.priority]
            seqs = [self._seq[j] for j in peers]
            at = peers.index(job_id)
            peers.insert(min(max(at + offset, 0), len(peers) - 1), peers.pop(at))
            self._seq.update(zip(peers, seqs, strict=True))
            self._renumber()
            self.emit("job_moved", job_id, message=f"{offset:+d} places")

    def preview(self, job_id: str, sample: int) -> bytes | None:
        with self._cv:
            self._check_up()
            self.reads["preview"] += 1
            self._job(job_id)
            return self.previews.get((job_id, sample))

    def read_output(self, job_id: str, index: int) -> bytes:
        with self._cv:
            self._check_up()
            self.reads["read_output"] += 1
            job = self._job(job_id)
        return read_output(job, index)

    # ----- FarmService: nodes -------------------------------------------------------------------

    def list_nodes(self) -> list[NodeView]:
        with self._cv:
            self._check_up()
            self.reads["list_nodes"] += 1
            return list(self.nodes.values())

    def pause_node(self, name: str, pause: Pause = OPERATOR_PAUSE) -> None:
        with self._cv:
            self.calls.append(("pause_node", name) if pause == OPERATOR_PAUSE else ("pause_node", name, pause))
            node = self._node(name)
            if node.status not in (NodeStatus.OFFLINE, NodeStatus.STARTING):  # those say so first
                self.nodes[name] = replace(node, status=NodeStatus.PAUSED, pause_reason=pause.text)
            self.emit("node_paused", node=name, message=pause.text)

    def drain_node(self, name: str) -> None:
        with self._cv:
            self.calls.append(("drain_node", name))
            node = self._node(name)
            if node.status in (NodeStatus.IDLE, NodeStatus.BUSY):  # a pause, offline or starting says so first
                self.nodes[name] = replace(node, status=NodeStatus.DRAINING, pause_reason=DRAINING_REASON)
            self.emit("node_draining", node=name)

    def resume_node(self, name: str) -> None:
        with self._cv:
            self.calls.append(("resume_node", name))
            node = self._node(name)
            if node.status == NodeStatus.OFFLINE:
                raise InvalidInput("node", f"{name} is offline ({node.pause_reason or 'unreachable'})")
            if node.status in (NodeStatus.PAUSED, NodeStatus.DRAINING):
                status = NodeStatus.BUSY if node.segment else NodeStatus.IDLE
                self.nodes[name] = replace(node, status=status, pause_reason="")
            self.emit("node_resumed", node=name)

    # ----- FarmService: events ------------------------------------------------------------------

    def events(self, after: int, timeout: float = 0.0) -> list[Event]:
        with self._cv:
            self._check_up()
            self._cv.wait_for(lambda: bool(self.log) and self.log[-1].seq > after, timeout)
            return [e for e in self.log if e.seq > after]

    # ----- helpers ------------------------------------------------------------------------------

    def _check_up(self) -> None:
        if self.down:
            raise Unreachable(self.down)

    def _job(self, job_id: str) -> JobView:
        if job_id not in self.jobs:
            raise NotFound("job", f"no job {job_id!r}")
        return self.jobs[job_id]

    def _node(self, name: str) -> NodeView:
        if name not in self.nodes:
            raise NotFound("node", f"no node {name!r}; nodes: {', '.join(sorted(self.nodes)) or 'none'}")
        return self.nodes[name]

    def _set_status(self, job_id: str, new: JobStatus, kind: str = "", error: str | None = None) -> None:
        """A status change by the coordinator's rules (`transition`), then its activity line."""
        job = self._job(job_id)
        status = transition(job_id, job.status, new)
        ended = status in (JobStatus.DONE, JobStatus.CANCELLED, JobStatus.FAILED)
        self.jobs[job_id] = replace(job, status=status, finished_at=self.clock() if ended else None,
                                    error=job.error if error is None else error,
                                    eta_s=job.eta_s if status == JobStatus.RUNNING else None)
        self._renumber()
        view = self.jobs[job_id]
        self.emit(kind or f"job_{status}", job_id, message=view.error if status == JobStatus.FAILED else "")

    def _in_seq_order(self) -> list[str]:
        """Job ids in queue order of submission (a move changes it); jobs a test added go last."""
        for job_id in self.jobs:
            if job_id not in self._seq:
                self._seq[job_id] = max(self._seq.values(), default=0) + 1
        return sorted(self.jobs, key=self._seq.__getitem__)

    def _renumber(self) -> None:
        """Queue places after a control, by the coordinator's order (`farm.core.order`: priority, owners
        taking turns, first in first out) with the sample-steps a job has left standing in for the
        GPU-seconds it needs and no GPU-seconds used yet; 0 for every job not waiting."""
        order = self._in_seq_order()
        waiting = [QueuedJob(j, v.spec.owner, v.spec.priority, self._seq[j], float(v.steps_total - v.steps_done))
                   for j in order if (v := self.jobs[j]).status in WAITING]
        place = {job_id: i + 1 for i, job_id in enumerate(order_jobs(waiting))}
        for job_id in order:
            if self.jobs[job_id].position != place.get(job_id, 0):
                self.jobs[job_id] = replace(self.jobs[job_id], position=place.get(job_id, 0))
