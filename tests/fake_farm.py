"""A small in-memory `FarmService` for testing control surfaces (gRPC, CLI) without Ray."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

from farm.contracts.control import Event, JobView, NodeStatus, NodeView, OwnerPolicy
from farm.contracts.domain import JobSpec, JobStatus, NodeInfo
from farm.contracts.errors import InvalidInput, NotFound


class FakeFarm:
    def __init__(self) -> None:
        self.jobs: dict[str, JobView] = {}
        self.order: list[str] = []
        self.nodes = {"pc1": NodeView(NodeInfo("pc1", 12.0, gpu="RTX 3060"), NodeStatus.IDLE,
                                      temperature_c=51.0, policy=OwnerPolicy(vram_cap_gib=10.0, pause_programs=("game.exe",))),
                      "pc2": NodeView(NodeInfo("pc2", 8.0, simulated=True), NodeStatus.BUSY, segment="j/s0#1 steps 4-8")}
        self.log: list[Event] = []
        self.calls: list[tuple[str, object]] = []
        self.previews: dict[tuple[str, int], bytes] = {}
        self._cv = threading.Condition()

    def _event(self, kind: str, job_id: str = "", node: str = "") -> None:
        with self._cv:
            self.log.append(Event(len(self.log) + 1, time.time(), kind, job_id, node))
            self._cv.notify_all()

    def _job(self, job_id: str) -> JobView:
        if job_id not in self.jobs:
            raise NotFound("job_id", f"no job {job_id!r}")
        return self.jobs[job_id]

    def _node(self, name: str) -> NodeView:
        if name not in self.nodes:
            raise NotFound("name", f"no node {name!r}")
        return self.nodes[name]

    def submit(self, spec: JobSpec) -> str:
        job_id = f"j{len(self.jobs) + 1}"
        n = len(spec.samples())
        self.jobs[job_id] = JobView(job_id, spec, JobStatus.QUEUED, 0, n, 0, n * spec.steps, time.time(),
                                    position=len(self.order) + 1)
        self.order.append(job_id)
        self._event("job_submitted", job_id)
        return job_id

    def list_jobs(self) -> list[JobView]:
        return [self.jobs[j] for j in self.order]

    def get_job(self, job_id: str) -> JobView:
        return self._job(job_id)

    def _set(self, job_id: str, status: JobStatus, kind: str) -> None:
        self.jobs[job_id] = replace(self._job(job_id), status=status)
        self.calls.append((kind, job_id))
        self._event(kind, job_id)

    def cancel_job(self, job_id: str) -> None:
        if self._job(job_id).status == JobStatus.DONE:
            raise InvalidInput("job_id", f"job {job_id} is done")
        self._set(job_id, JobStatus.CANCELLED, "job_cancelled")

    def pause_job(self, job_id: str) -> None:
        self._set(job_id, JobStatus.QUEUED, "job_paused")

    def resume_job(self, job_id: str) -> None:
        self._set(job_id, JobStatus.QUEUED, "job_resumed")

    def retry_job(self, job_id: str) -> None:
        self._set(job_id, JobStatus.QUEUED, "job_retried")

    def set_priority(self, job_id: str, priority: int) -> None:
        view = self._job(job_id)
        self.jobs[job_id] = replace(view, spec=replace(view.spec, priority=priority))
        self.calls.append(("set_priority", (job_id, priority)))

    def move_job(self, job_id: str, offset: int) -> None:
        self._job(job_id)
        self.calls.append(("move_job", (job_id, offset)))

    def list_nodes(self) -> list[NodeView]:
        return list(self.nodes.values())

    def _node_status(self, name: str, status: NodeStatus, kind: str) -> None:
        self.nodes[name] = replace(self._node(name), status=status)
        self._event(kind, node=name)

    def pause_node(self, name: str) -> None:
        self._node_status(name, NodeStatus.PAUSED, "node_paused")

    def drain_node(self, name: str) -> None:
        self._node_status(name, NodeStatus.DRAINING, "node_draining")

    def resume_node(self, name: str) -> None:
        self._node_status(name, NodeStatus.IDLE, "node_resumed")

    def events(self, after: int, timeout: float = 0.0) -> list[Event]:
        with self._cv:
            self._cv.wait_for(lambda: len(self.log) > after, timeout=timeout)
            return self.log[after:]

    def preview(self, job_id: str, sample: int) -> bytes | None:
        self._job(job_id)
        return self.previews.get((job_id, sample))
