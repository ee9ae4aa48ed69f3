"""The agent's loop: read the PC, apply the owner's rules, keep the Ray worker in step with them.

One `tick` reads telemetry, asks `node.policy` for the state, and starts or stops the worker:
- idle: the worker runs (restarted by its supervisor if it dies);
- paused: the head checkpoints the node's segment at its next step; after `release_s` the worker is
  stopped, which frees the GPU even if a segment did not stop in time (its last checkpoint stays);
- draining: the segment in flight may finish; the worker is stopped after `drain_s`.
While the worker should run but cannot start (its supervisor's precheck: the head's Ray port blocked),
the agent reports the node offline with that reason, and idle again once it starts.
Every tick's reading is kept for `StreamTelemetry`, and the head follows it to pause, drain or
resume the node in the coordinator; a reading wakes the stream only when something the head acts on
or shows changed, or every `HEARTBEAT_S`.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from farm.contracts.control import NodeStatus, OwnerPolicy
from farm.contracts.hardware import Hardware, Reading, Telemetry
from node import policy as rules
from node.probe import HostProbe, process_tree
from node.worker import Supervisor

log = logging.getLogger(__name__)
# A reading that changes nothing the head acts on or shows is still sent this often (as often as the
# head revives an offline node whose worker runs, agent_links.REVIVE_S): the head's
# figures (CPU, RAM) stay fresh and a follower sees the agent alive, without a message every tick.
HEARTBEAT_S = 10.0


@dataclass(frozen=True)
class Snapshot:
    """The latest reading and what the agent made of it."""

    seq: int
    telemetry: Telemetry
    status: NodeStatus
    reason: str
    worker_running: bool
    policy: OwnerPolicy
    by_operator: bool = False  # the status is an operator's pause or drain, not the owner's rules
    worker_starts: int = 0


def _news(s: Snapshot) -> tuple[object, ...]:
    """What of a snapshot is worth a message at once: states, the worker, the owner's rules, and GPU
    figures at the resolution a person reads them (sensors jitter by a degree or a watt)."""
    gpus = tuple((g.index, round(g.vram_used_gib, 1), round(g.utilization, 1),
                  None if g.temperature_c is None else round(g.temperature_c / 5),
                  None if g.power_w is None else round(g.power_w / 10)) for g in s.telemetry.gpus)
    return s.status, s.reason, s.worker_running, s.policy, s.by_operator, s.worker_starts, gpus


def _minute_of_day() -> int:
    now = datetime.datetime.now()
    return now.hour * 60 + now.minute


class Agent:
    def __init__(self, probe: HostProbe, policy: OwnerPolicy, worker: Supervisor | None = None, *,
                 release_s: float = 5.0, drain_s: float = 600.0, settle_s: float = rules.DEFAULT_SETTLE_S,
                 clock: Callable[[], float] = time.monotonic,
                 minute_of_day: Callable[[], int] = _minute_of_day,
                 release: Callable[[], None] | None = None, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.probe = probe
        self.worker = worker
        # Without a worker to stop (the head's own GPU, whose actors live in the head's Ray node):
        # called once per pause, after `release_s`, to make the node's actors free the GPU.
        self.release = release
        self._released = False
        self.release_s, self.drain_s, self.settle_s = release_s, drain_s, settle_s
        self._clock = clock
        self._minute = minute_of_day
        self._state = rules.RulesState(rules.validate(policy))
        self._since = clock()  # when the current status began
        self._cv = threading.Condition()
        self._snapshot: Snapshot | None = None
        self.heartbeat_s = heartbeat_s
        self._sent = clock()  # when the last snapshot was published (its seq went up)
        self._hardware: Hardware | None = None
        self._stop = threading.Event()

    def hardware(self) -> Hardware:
        if self._hardware is None:
            self._hardware = self.probe.hardware()
        return self._hardware

    def tick(self) -> Snapshot:
        """One reading, decision and worker action (the loop calls this every interval)."""
        # Every program only when the owner named games; otherwise those on the GPU are all the rules
        # look at, and the worker's own processes matter only when some process is on the GPU.
        reading = self.probe.telemetry(every_process=bool(self._state.policy.pause_programs))
        on_gpu = any(p.uses_gpu for p in reading.processes)
        own = process_tree(self.worker.pid if self.worker else None) if on_gpu else set()
        # Where the driver reports per-process memory (Linux); elsewhere the cap still sizes the budget.
        farm_vram = sum(p.gpu_gib for p in reading.processes if p.pid in own)
        pause, drain = rules.reasons(self._state.policy, reading.processes, reading.gpus, self._minute(), own,
                                     farm_vram)
        with self._cv:
            before = self._state.held.status
            self._state = rules.decide(self._state, self._clock(), pause, drain, self.settle_s)
            return self._publish(reading, before)

    def _publish(self, reading: Telemetry, before: NodeStatus) -> Snapshot:
        held = self._state.held
        if held.status != before:
            self._since = self._clock()
            log.info("node %s: %s", held.status, held.reason)
        self._steer_worker(held.status)
        prev = self._snapshot
        status, reason = held.status, held.reason
        problem = self.worker.problem if self.worker is not None else ""
        if status == NodeStatus.IDLE and problem:  # it should work, and cannot: the head shows it offline
            status, reason = NodeStatus.OFFLINE, problem
        snap = Snapshot(prev.seq if prev else 0, reading, status, reason,
                        bool(self.worker and self.worker.running), self._state.policy,
                        self._state.operator is not None, self.worker.starts if self.worker else 0)
        if prev is not None and _news(snap) == _news(prev) and self._clock() - self._sent < self.heartbeat_s:
            self._snapshot = snap  # kept for the next message; nobody is woken for it
            return snap
        self._snapshot = replace(snap, seq=snap.seq + 1)
        self._sent = self._clock()
        self._cv.notify_all()
        return self._snapshot

    def _steer_worker(self, status: NodeStatus) -> None:
        if self.worker is None:
            if status != NodeStatus.PAUSED:
                self._released = False
            elif self.release is not None and not self._released and self._clock() - self._since >= self.release_s:
                self._released = True
                threading.Thread(target=self.release, name="release-gpu", daemon=True).start()
            return
        waited = self._clock() - self._since
        if status == NodeStatus.IDLE:
            self.worker.start()
        elif self.worker.wanted and (status == NodeStatus.PAUSED and waited >= self.release_s) or (
                status == NodeStatus.DRAINING and waited >= self.drain_s):
            threading.Thread(target=self.worker.stop, name="stop-ray-worker", daemon=True).start()

    def _command(self, status: NodeStatus | None, reason: str) -> Snapshot:
        with self._cv:
            before = self._state.held.status
            self._state = rules.operator(self._state, status, reason)
            self._state = rules.decide(self._state, self._clock(), [], [], self.settle_s)
            reading = self._snapshot.telemetry if self._snapshot else self.probe.telemetry()
            return self._publish(reading, before)

    def pause(self, reason: str = "") -> Snapshot:
        return self._command(NodeStatus.PAUSED, reason or "paused by an operator")

    def drain(self, reason: str = "") -> Snapshot:
        return self._command(NodeStatus.DRAINING, reason or "drained by an operator")

    def resume(self) -> Snapshot:
        """Clear an operator's pause or drain; the owner's rules still apply at the next tick."""
        return self._command(None, "")

    def set_policy(self, policy: OwnerPolicy) -> Snapshot:
        rules.validate(policy)
        with self._cv:
            self._state = rules.RulesState(policy, self._state.operator, self._state.operator_reason,
                                           self._state.held, self._state.clear_since)
        return self.tick()

    def latest(self, after_seq: int, timeout: float) -> Snapshot | None:
        """The newest snapshot once its seq is above `after_seq`, waiting up to `timeout`."""
        with self._cv:
            self._cv.wait_for(lambda: self._snapshot is not None and self._snapshot.seq > after_seq, timeout)
            return self._snapshot if self._snapshot and self._snapshot.seq > after_seq else None

    def run(self, interval_s: float = 2.0) -> None:
        """Tick until `close`; one failed reading is logged, never fatal."""
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("agent tick failed")
            self._stop.wait(interval_s)

    def close(self) -> None:
        self._stop.set()
        if self.worker is not None:
            self.worker.stop()


class InProcessHandle:
    """The head's own agent as an `AgentHandle`: the head reads and steers it without a network hop."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._closed = threading.Event()

    def follow(self) -> Iterator[Reading]:
        seq = 0
        while not self._closed.is_set():
            snap = self.agent.latest(seq, timeout=HEARTBEAT_S)
            if snap is not None:
                seq = snap.seq
                yield Reading(snap.status, snap.reason, snap.telemetry.gpus, snap.policy, snap.by_operator,
                              snap.worker_starts)

    def command(self, status: NodeStatus | None, reason: str) -> None:
        if status == NodeStatus.PAUSED:
            self.agent.pause(reason)
        elif status == NodeStatus.DRAINING:
            self.agent.drain(reason)
        else:
            self.agent.resume()

    def close(self) -> None:
        self._closed.set()
