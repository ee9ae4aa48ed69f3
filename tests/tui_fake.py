"""A `FarmService` over plain data for the dashboard's tests: fixed times, every control call
recorded, reads counted, and an event stream that wakes a waiting long-poll like a real head."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import replace
from io import BytesIO

from PIL import Image

from farm.contracts.control import Event, JobView, NodeShare, NodeStatus, NodeView, OwnerPolicy, ShardView
from farm.contracts.domain import JobSpec, JobStatus, NodeInfo
from farm.contracts.errors import InvalidInput, Unreachable
from farm.jobs.jobspec import make_job

T0 = 1_764_072_000.0  # 2025-11-25 12:00:00 UTC: every time in the fake counts from here


def spec(owner: str = "ana", priority: int = 0, prompts: int = 2, seeds: int = 2, steps: int = 20) -> JobSpec:
    return make_job(prompts=[f"prompt {i}" for i in range(prompts)], seeds=seeds, steps=steps, owner=owner,
                    priority=priority, sampler="euler_a")


def job(job_id: str, status: JobStatus = JobStatus.QUEUED, *, owner: str = "ana", priority: int = 0,
        done: int = 0, steps_done: int = 0, position: int = 0, eta_s: float | None = None, error: str = "",
        shards: tuple[ShardView, ...] = (), shares: tuple[NodeShare, ...] = (), at: float = 0.0) -> JobView:
    s = spec(owner, priority)
    n = len(s.samples())
    return JobView(job_id, s, status, done, n, steps_done, n * s.steps, T0 + at, position=position, eta_s=eta_s,
                   error=error, shards=shards, shares=shares)


def gradient_png(size: int = 32) -> bytes:
    """A fixed picture (red across, green down) so a thumbnail's colours are known."""
    image = Image.new("RGB", (size, size))
    image.putdata([(x * 255 // size, y * 255 // size, 96) for y in range(size) for x in range(size)])
    out = BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def sample_nodes() -> list[NodeView]:
    return [
        NodeView(NodeInfo("pc-anna", 24.0, 2.0, "RTX 4090"), NodeStatus.BUSY, "j1/s0#1 steps 10-20", 14, 20,
                 vram_used_gib=17.5, utilization=0.97, temperature_c=71.0, power_w=402.0, loaded=("demo-tiny",),
                 policy=OwnerPolicy(active_hours="22:00-08:00", pause_programs=("eldenring.exe", "cs2.exe"))),
        NodeView(NodeInfo("pc-ben", 12.0, 1.0, "RTX 3060"), NodeStatus.IDLE, vram_used_gib=0.4, utilization=0.02,
                 temperature_c=38.0, policy=OwnerPolicy(vram_cap_gib=10.0)),
        NodeView(NodeInfo("pc-cleo", 8.0, 0.6, "RTX 3070"), NodeStatus.PAUSED, vram_used_gib=6.1,
                 utilization=0.88, temperature_c=66.0, pause_reason="game started: cs2.exe"),
        NodeView(NodeInfo("pc-dan", 16.0, 1.2, "RX 7800 XT"), NodeStatus.OFFLINE),
    ]


def sample_jobs() -> list[JobView]:
    running = (ShardView("j1/s0", "pc-anna", (0, 1), ((0, 10), (10, 20)), 14, node="pc-anna"),
               ShardView("j1/s1", "pc-ben", (2, 3), ((0, 7), (7, 14), (14, 20)), 7))
    return [
        job("j1", JobStatus.RUNNING, steps_done=42, position=1, eta_s=95, shards=running,
            shares=(NodeShare("pc-anna", steps=28), NodeShare("pc-ben", steps=14))),
        job("j2", JobStatus.QUEUED, owner="ben", position=2, eta_s=400, at=10),
        job("j3", JobStatus.QUEUED, owner="ana", priority=5, position=3, eta_s=700, at=20),
        job("j4", JobStatus.PAUSED, owner="cleo", done=1, steps_done=30, at=30),
        job("j5", JobStatus.FAILED, owner="ben", done=2, steps_done=45, at=40,
            error="segment failed 3 times on pc-dan"),
        job("j6", JobStatus.DONE, owner="ana", done=4, steps_done=80, at=50),
    ]


def sample_events() -> list[Event]:
    return [
        Event(1, T0 + 1, "node_joined", node="pc-anna"),
        Event(2, T0 + 2, "job_submitted", job_id="j1"),
        Event(3, T0 + 3, "segment_started", job_id="j1", node="pc-anna", message="j1/s0#0 steps 0-10"),
        Event(4, T0 + 9, "segment_finished", job_id="j1", node="pc-anna", message="j1/s0#0 steps 0-10"),
        Event(5, T0 + 12, "node_paused", node="pc-cleo", message="game started: cs2.exe"),
        Event(6, T0 + 15, "job_failed", job_id="j5", message="segment failed 3 times on pc-dan"),
    ]


MOVABLE = (JobStatus.QUEUED,)


class FakeFarmService:
    def __init__(self, nodes: list[NodeView] | None = None, jobs: list[JobView] | None = None,
                 events: list[Event] | None = None) -> None:
        self.nodes = {n.info.name: n for n in (sample_nodes() if nodes is None else nodes)}
        self.jobs = {j.id: j for j in (sample_jobs() if jobs is None else jobs)}
        self.log = list(sample_events() if events is None else events)
        self.previews = {("j1", 0): gradient_png(), ("j1", 1): gradient_png(16)}
        self.calls: list[tuple[object, ...]] = []
        self.reads: Counter[str] = Counter()
        self.down = ""  # when set, every read fails with this message, like a head that went away
        self.gate = threading.Event()  # list_jobs waits for it: clear it to play a slow head
        self.gate.set()
        self._cv = threading.Condition()

    # ----- what tests do to the farm ------------------------------------------------------------

    def emit(self, kind: str, job_id: str = "", node: str = "", message: str = "") -> None:
        with self._cv:
            seq = self.log[-1].seq + 1 if self.log else 1
            self.log.append(Event(seq, T0 + 100 + seq, kind, job_id, node, message))
            self._cv.notify_all()

    def put_job(self, view: JobView) -> None:
        with self._cv:
            self.jobs[view.id] = view

    def put_node(self, view: NodeView) -> None:
        with self._cv:
            self.nodes[view.info.name] = view

    # ----- FarmService --------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        with self._cv:
            job_id = f"j{len(self.jobs) + 1}"
            n = len(spec.samples())
            self.jobs[job_id] = JobView(job_id, spec, JobStatus.QUEUED, 0, n, 0, n * spec.steps, T0 + 60,
                                        position=len(self.jobs) + 1)
            self.calls.append(("submit", spec))
        self.emit("job_submitted", job_id)
        return job_id

    def list_jobs(self) -> list[JobView]:
        self.gate.wait()
        with self._cv:
            self._check_up()
            self.reads["list_jobs"] += 1
            return list(self.jobs.values())

    def get_job(self, job_id: str) -> JobView:
        with self._cv:
            self.reads["get_job"] += 1
            return self._job(job_id)

    def cancel_job(self, job_id: str) -> None:
        self._set_job("cancel_job", job_id, JobStatus.CANCELLED, "job_cancelled", JobStatus.RUNNING,
                      JobStatus.QUEUED, JobStatus.PAUSED)

    def pause_job(self, job_id: str) -> None:
        self._set_job("pause_job", job_id, JobStatus.PAUSED, "job_paused", JobStatus.RUNNING, JobStatus.QUEUED)

    def resume_job(self, job_id: str) -> None:
        self._set_job("resume_job", job_id, JobStatus.QUEUED, "job_resumed", JobStatus.PAUSED)

    def retry_job(self, job_id: str) -> None:
        self._set_job("retry_job", job_id, JobStatus.QUEUED, "job_resumed", JobStatus.FAILED)

    def set_priority(self, job_id: str, priority: int) -> None:
        with self._cv:
            self.calls.append(("set_priority", job_id, priority))
            old = self._job(job_id)
            self.jobs[job_id] = replace(old, spec=replace(old.spec, priority=priority))
        self.emit("job_moved", job_id)

    def move_job(self, job_id: str, offset: int) -> None:
        with self._cv:
            self.calls.append(("move_job", job_id, offset))
            queue = sorted((j for j in self.jobs.values() if j.position), key=lambda j: j.position)
            ids = [j.id for j in queue]
            if job_id not in ids:
                raise InvalidInput("job", f"{job_id} is {self._job(job_id).status}, not queued")
            i = ids.index(job_id)
            ids.insert(min(max(i + offset, 0), len(ids) - 1), ids.pop(i))
            for place, moved in enumerate(ids, 1):
                self.jobs[moved] = replace(self.jobs[moved], position=place)
        self.emit("job_moved", job_id)

    def list_nodes(self) -> list[NodeView]:
        with self._cv:
            self._check_up()
            self.reads["list_nodes"] += 1
            return list(self.nodes.values())

    def pause_node(self, name: str) -> None:
        self._set_node("pause_node", name, NodeStatus.PAUSED, "node_paused")

    def drain_node(self, name: str) -> None:
        self._set_node("drain_node", name, NodeStatus.DRAINING, "node_draining")

    def resume_node(self, name: str) -> None:
        self._set_node("resume_node", name, NodeStatus.IDLE, "node_resumed")

    def events(self, after: int, timeout: float = 0.0) -> list[Event]:
        with self._cv:
            self._check_up()
            self._cv.wait_for(lambda: bool(self.log) and self.log[-1].seq > after, timeout)
            return [e for e in self.log if e.seq > after]

    def preview(self, job_id: str, sample: int) -> bytes | None:
        with self._cv:
            self.reads["preview"] += 1
            return self.previews.get((job_id, sample))

    # ----- helpers ------------------------------------------------------------------------------

    def _check_up(self) -> None:
        if self.down:
            raise Unreachable(self.down)

    def _job(self, job_id: str) -> JobView:
        if job_id not in self.jobs:
            raise InvalidInput("job", f"no job {job_id!r}")
        return self.jobs[job_id]

    def _set_job(self, call: str, job_id: str, status: JobStatus, kind: str, *allowed: JobStatus) -> None:
        with self._cv:
            self.calls.append((call, job_id))
            old = self._job(job_id)
            if old.status not in allowed:
                raise InvalidInput("job", f"{job_id} is {old.status}")
            self.jobs[job_id] = replace(old, status=status)
        self.emit(kind, job_id)

    def _set_node(self, call: str, name: str, status: NodeStatus, kind: str) -> None:
        with self._cv:
            self.calls.append((call, name))
            if name not in self.nodes:
                raise InvalidInput("node", f"no node {name!r}")
            self.nodes[name] = replace(self.nodes[name], status=status)
        self.emit(kind, node=name)
