"""The head's links to the agents: it follows each PC's telemetry and applies the owner's decisions
to the coordinator, and forwards an operator's pause, drain or resume to the PC.

`NodesWithTelemetry` is the `FarmService` that the head serves: the coordinator's, with each node
view filled in from its agent (VRAM in use, utilization, temperature, power, the owner's rules), and
node commands sent to both the coordinator (which stops giving work, checkpoints) and the agent
(which stops the Ray worker to free the GPU).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Protocol

import grpc

from farm.api import convert
from farm.api.auth import bearer
from farm.api.control_client import open_channel, split_address
from farm.cluster.membership import Member
from farm.contracts.control import (
    OPERATOR_PAUSE,
    Event,
    FarmService,
    JobView,
    NodeStatus,
    NodeView,
    OwnerPolicy,
    Pause,
    PauseBy,
)
from farm.contracts.domain import JobSpec
from farm.contracts.errors import FarmError
from farm.contracts.hardware import Reading
from farm.runtime.output_files import read_output
from protos.farm.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)
RETRY_S = 5.0
# A PC's agent starts listening just after it joins: until it has answered once, failures are
# "not listening yet" (retried every second), not "unreachable", for this long.
FIRST_CONTACT_S = 30.0
# An offline node whose agent reports a running Ray worker gets a new actor at most this often: after
# a power cut Ray counts the old worker alive for a while, and an actor placed on it dies with it.
REVIVE_S = 10.0
UNREACHABLE = "agent unreachable"


class AgentHandle(Protocol):
    """One PC's agent as the head reaches it: over gRPC, or in process for the head's own agent."""

    def follow(self) -> Iterator[Reading]: ...

    def command(self, status: NodeStatus | None, reason: str) -> None:
        """Pause or drain (status), or resume (None)."""

    def close(self) -> None: ...


class RemoteAgent:
    """A joined PC's agent over TLS (the farm CA, the certificate of its latest join) with its node token."""

    def __init__(self, member: Member, ca_pem: bytes) -> None:
        host, port = split_address(member.agent_address, 0)
        self._channel = open_channel(host, port, ca_pem, member.agent_host)
        self._stub = agent_pb2_grpc.NodeAgentStub(self._channel)
        self._metadata = bearer(member.token)
        self._stream: grpc.Future | None = None

    def follow(self) -> Iterator[Reading]:
        self._stream = self._stub.StreamTelemetry(agent_pb2.TelemetryRequest(), metadata=self._metadata)
        for t in self._stream:
            yield Reading(NodeStatus(t.state), t.reason, tuple(convert.gpu_from_proto(g) for g in t.gpus),
                          convert.policy_from_proto(t.policy), t.by_operator, t.worker_starts)

    def command(self, status: NodeStatus | None, reason: str) -> None:
        request = agent_pb2.NodeCommand(reason=reason)
        method = {NodeStatus.PAUSED: "Pause", NodeStatus.DRAINING: "Drain", None: "Resume"}[status]
        getattr(self._stub, method)(request, metadata=self._metadata, timeout=10)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
        self._channel.close()


class AgentLinks:
    """Follows every PC's agent on its own thread and applies status changes to `service`."""

    def __init__(self, service: FarmService, on_new_worker: Callable[[str], None] | None = None,
                 on_offline: Callable[[str, str], None] | None = None) -> None:
        """`on_new_worker(node)`: the PC's Ray worker was started again (after the owner took the
        GPU back, or a crash), so the node's actor died with the old one and needs a new one.
        `on_offline(node, reason)`: the agent says its worker cannot work (e.g. the head's Ray port
        is blocked): the node is offline with the agent's reason until a worker starts again."""
        self.service = service
        self.on_new_worker = on_new_worker
        self.on_offline = on_offline
        self._lock = threading.Lock()
        self._links: dict[str, tuple[AgentHandle, tuple[str, ...], threading.Event]] = {}
        self._readings: dict[str, Reading] = {}  # by node name

    def add(self, pc: str, nodes: tuple[str, ...], agent: AgentHandle) -> None:
        self.remove(pc)
        stop = threading.Event()
        with self._lock:
            self._links[pc] = (agent, nodes, stop)
        threading.Thread(target=self._follow, args=(pc, nodes, agent, stop), name=f"agent-{pc}", daemon=True).start()

    def remove(self, pc: str) -> None:
        with self._lock:
            link = self._links.pop(pc, None)
        if link is not None:
            agent, nodes, stop = link
            stop.set()
            agent.close()
            with self._lock:
                for n in nodes:
                    self._readings.pop(n, None)

    def reading(self, node: str) -> Reading | None:
        with self._lock:
            return self._readings.get(node)

    def command(self, node: str, status: NodeStatus | None, reason: str) -> None:
        """Send an operator's command to the agent of the PC that has `node` (if linked)."""
        with self._lock:
            agent = next((a for a, nodes, _ in self._links.values() if node in nodes), None)
        if agent is None:
            return
        try:
            agent.command(status, reason)
        except (grpc.RpcError, FarmError) as e:
            log.warning("could not tell the agent of %s: %s", node, e)

    def _follow(self, pc: str, nodes: tuple[str, ...], agent: AgentHandle, stop: threading.Event) -> None:
        applied: NodeStatus | None = None
        starts: int | None = None  # the worker starts of the last reading (None: none heard yet)
        heard = False
        began = time.monotonic()
        revived = 0.0
        warned = ""  # the last warning logged: each is logged once per change
        while not stop.is_set():
            try:
                for reading in agent.follow():
                    heard, warned = True, ""
                    # A restart, not the first start: a reading taken before the first start (0) and the
                    # next one after a restart (2), the one in between missed, is a restart too.
                    if starts is not None and reading.worker_starts > max(starts, 1) and self.on_new_worker:
                        for n in nodes:
                            self.on_new_worker(n)
                    starts = reading.worker_starts
                    with self._lock:  # node i of a PC is its GPU i
                        for i, n in enumerate(nodes):
                            self._readings[n] = replace(reading, gpus=reading.gpus[i:i + 1])
                    if reading.status != applied and not reading.by_operator:
                        self._apply(nodes, reading)
                    applied = reading.status
                    if reading.worker_starts and reading.status != NodeStatus.PAUSED and self.on_new_worker \
                            and time.monotonic() - revived >= REVIVE_S:
                        offline = self._offline(nodes)
                        for n in offline:  # its worker runs, yet its actor is gone: make another
                            self.on_new_worker(n)
                        if offline:
                            revived = time.monotonic()
                    if stop.is_set():
                        return
            except (grpc.RpcError, FarmError, ValueError) as e:
                if stop.is_set():
                    return
                if not heard and time.monotonic() - began < FIRST_CONTACT_S:
                    stop.wait(1.0)  # it joined a moment ago: its agent is not listening yet
                    continue
                message = f"lost the agent of {pc} ({_brief(e)}); retrying every {RETRY_S:.0f} s"
                if message != warned:
                    log.warning("%s", message)
                    warned = message
                if applied != NodeStatus.PAUSED:  # a PC that cannot be reached gets no new work
                    self._apply(nodes, Reading(NodeStatus.PAUSED, UNREACHABLE, (), OwnerPolicy()))
                applied = None  # the first reading after reconnecting is applied whatever it says
            stop.wait(RETRY_S)

    def _offline(self, nodes: tuple[str, ...]) -> list[str]:
        status = {v.info.name: v.status for v in self.service.list_nodes()}
        return [n for n in nodes if status.get(n) == NodeStatus.OFFLINE]

    def _apply(self, nodes: tuple[str, ...], reading: Reading) -> None:
        """Bring the coordinator's nodes to the agent's status (skipping those already there, so an
        operator's command echoed back by the agent is not applied twice)."""
        current = {v.info.name: v.status for v in self.service.list_nodes()}
        for n in nodes:
            now = current.get(n)
            if now is None or (now == reading.status and now != NodeStatus.OFFLINE):
                continue
            if reading.status == NodeStatus.IDLE and now not in (NodeStatus.PAUSED, NodeStatus.DRAINING):
                continue  # only a pause or drain is resumed; a starting or offline node waits for its worker
            try:
                if reading.status == NodeStatus.OFFLINE:
                    if self.on_offline is not None:
                        self.on_offline(n, reading.reason)
                elif reading.status == NodeStatus.PAUSED:
                    by = PauseBy.AGENT if reading.reason == UNREACHABLE else PauseBy.OWNER
                    self.service.pause_node(n, Pause(by, "" if by == PauseBy.AGENT else reading.reason))
                elif reading.status == NodeStatus.DRAINING:
                    self.service.drain_node(n)
                else:
                    self.service.resume_node(n)
            except FarmError as e:
                log.warning("node %s: %s", n, e)


class NodesWithTelemetry:
    """A `FarmService`: `inner`'s, with node views from the agents and node commands sent to them."""

    def __init__(self, inner: FarmService, links: AgentLinks) -> None:
        self.inner = inner
        self.links = links

    def submit(self, spec: JobSpec, init_image: bytes | None = None) -> str:
        return self.inner.submit(spec, init_image=init_image)

    def list_jobs(self, after: str = "", limit: int | None = None) -> list[JobView]:
        return self.inner.list_jobs(after, limit)

    def get_job(self, job_id: str) -> JobView:
        return self.inner.get_job(job_id)

    def cancel_job(self, job_id: str) -> None:
        self.inner.cancel_job(job_id)

    def forget_job(self, job_id: str) -> None:
        self.inner.forget_job(job_id)

    def pause_job(self, job_id: str) -> None:
        self.inner.pause_job(job_id)

    def resume_job(self, job_id: str) -> None:
        self.inner.resume_job(job_id)

    def retry_job(self, job_id: str) -> None:
        self.inner.retry_job(job_id)

    def set_priority(self, job_id: str, priority: int) -> None:
        self.inner.set_priority(job_id, priority)

    def move_job(self, job_id: str, offset: int) -> None:
        self.inner.move_job(job_id, offset)

    def list_nodes(self) -> list[NodeView]:
        out = []
        for view in self.inner.list_nodes():
            r = self.links.reading(view.info.name)
            if r is not None and r.gpus:
                gpu = r.gpus[0]
                view = replace(view, vram_used_gib=gpu.vram_used_gib, utilization=gpu.utilization,
                               temperature_c=gpu.temperature_c, power_w=gpu.power_w, policy=r.policy,
                               pause_reason=r.reason if r.status != NodeStatus.IDLE else view.pause_reason)
            out.append(view)
        return out

    def pause_node(self, name: str, pause: Pause = OPERATOR_PAUSE) -> None:
        self.inner.pause_node(name, pause)
        self.links.command(name, NodeStatus.PAUSED, "paused by an operator")

    def drain_node(self, name: str) -> None:
        self.inner.drain_node(name)
        self.links.command(name, NodeStatus.DRAINING, "drained by an operator")

    def resume_node(self, name: str) -> None:
        self.inner.resume_node(name)
        self.links.command(name, None, "")

    def events(self, after: int, timeout: float = 0.0) -> list[Event]:
        return self.inner.events(after, timeout)

    def preview(self, job_id: str, sample: int) -> bytes | None:
        return self.inner.preview(job_id, sample)

    def read_output(self, job_id: str, index: int) -> bytes:
        """Read here: the head's sink wrote every output on this PC, whatever `inner` is."""
        return read_output(self.inner.get_job(job_id), index)


def _brief(error: Exception) -> str:
    """One line for a log: a gRPC error's code and details, not its whole debug string."""
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return f"{error.code().name}: {error.details()}"  # type: ignore[attr-defined]
    return str(error)
