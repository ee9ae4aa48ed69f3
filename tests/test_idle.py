"""An idle farm waits on events, not timers: the coordinator sleeps until `decide` has something due
on the clock (`next_check`), the agent sends a reading when something the head uses changed (or a
slow heartbeat), and the Ray worker's supervisor blocks on the process instead of polling it; a
worker that cannot reach the head's Ray port is not started, and the agent says why."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import pytest
from test_coordinator import small_job
from test_liveness import farm_with
from waiting import wait_until

from farm.contracts.control import NodeStatus, OwnerPolicy
from farm.core import decide as decide_module
from farm.core.decide import next_check
from node.agent import Agent
from node.join import ray_port_problem
from node.probe import HostProbe, SimulatedGpus
from node.worker import Supervisor, WorkerCommand


def test_an_idle_farm_has_nothing_due_and_a_probe_or_lease_is_due_when_it_runs_out() -> None:
    c, ex, clock = farm_with(mute={"sim-8gb"})
    c.tick(0)  # probes out; two answer, sim-8gb does not
    assert next_check(c.state) == clock.now + decide_module.STARTUP_TIMEOUT_S  # sim-8gb's probe runs out
    clock.now += decide_module.STARTUP_TIMEOUT_S + 1
    c.tick(0)  # sim-8gb offline, and probed again at once: that probe has PROBE_TIMEOUT_S
    node = c.state.nodes["sim-8gb"]
    assert node.offline and node.probing
    assert next_check(c.state) == node.probed_at + decide_module.PROBE_TIMEOUT_S

    idle, held, idle_clock = farm_with()
    idle.tick(0)
    assert next_check(idle.state) is None  # every worker answered, nothing runs: only an event can matter
    held.hold = True  # segments stay running
    idle.submit(small_job())
    idle.tick(0)
    due = next_check(idle.state)
    assert any(n.running for n in idle.state.nodes.values())
    assert due is not None and due >= idle_clock.now + decide_module.LEASE_MIN_S  # a lease


def test_the_loop_waits_long_when_nothing_is_due() -> None:
    c, _, _ = farm_with()
    c.tick(0)
    from farm.runtime import coordinator

    assert c._wait_s() == coordinator.IDLE_WAIT_S


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_agent_sends_a_reading_on_change_or_heartbeat_only() -> None:
    clock = Clock()
    agent = Agent(HostProbe(SimulatedGpus([8.0])), OwnerPolicy(), clock=clock, heartbeat_s=10.0)
    first = agent.tick()
    clock.now += 2
    assert agent.tick().seq == first.seq and agent.latest(first.seq, 0) is None  # nothing new: nobody woken
    clock.now += 2
    assert agent.pause("test").seq == first.seq + 1  # a change goes out at once
    clock.now += 11
    agent.tick()
    assert agent.latest(first.seq + 1, 0) is not None  # the heartbeat


def test_a_worker_that_cannot_reach_the_ray_port_is_not_started_and_the_agent_says_why(tmp_path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    problem = ray_port_problem(f"127.0.0.1:{port}")
    assert f"127.0.0.1:{port}" in problem and f"allow TCP port {port}" in problem

    blocked = threading.Event()
    blocked.set()
    sup = Supervisor(WorkerCommand((sys.executable, "-c", "import time; time.sleep(600)"), {}),
                     precheck=lambda: "port closed" if blocked.is_set() else "", recheck_s=0.05)
    agent = Agent(HostProbe(SimulatedGpus([8.0])), OwnerPolicy(), sup)
    try:
        agent.tick()
        assert wait_until(lambda: agent.tick().status == NodeStatus.OFFLINE, 10)
        assert agent.tick().reason == "port closed" and sup.starts == 0
        blocked.clear()
        assert wait_until(lambda: sup.running, 10)
        assert wait_until(lambda: agent.tick().status == NodeStatus.IDLE, 10) and sup.starts == 1
    finally:
        agent.close()
    assert not sup.running


@pytest.mark.slow
def test_an_idle_actor_is_parked_and_the_next_job_starts_a_new_one_that_renders_the_same(embedded, tmp_path) -> None:
    """Real Ray actors with a short park time: once idle that long, every node's actor process is gone
    (no 10 ms wake-ups, no CUDA context) while the nodes stay idle; a probe is answered from the cluster
    view; the next job starts new actors, and its images equal those of the actors that were parked."""
    import numpy as np
    import psutil
    import ray
    from PIL import Image
    from waiting import ready

    from farm.cli.demo import demo_job
    from farm.runtime.coordinator import Coordinator
    from farm.runtime.executor import RayExecutor
    from farm.runtime.outputs import PngWriter

    def pixels(path: str) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).astype(int)

    class Steps(RayExecutor):
        """Keeps the step events the coordinator takes: progress streamed on the segment calls."""

        def step_events(self):  # type: ignore[no-untyped-def]
            events = super().step_events()
            seen.extend(events)
            return events

    seen: list = []
    executor = Steps(embedded.nodes(), park_s=2.0)
    try:
        c = Coordinator(executor, PngWriter(tmp_path), max_segment_steps=2)
        ready(c)
        first = c.render(demo_job(steps=2, seeds=1))
        assert first.status == "done"
        shards = {s.id for s in first.shards}
        steps = {(e.shard_id, e.step) for e in seen}  # 0: a heartbeat while the model loads
        assert {(s, k) for s in shards for k in (1, 2)} <= steps <= {(s, k) for s in shards for k in (0, 1, 2)}
        pids = {name: ray.get(actor.pid.remote(), timeout=60) for name, actor in executor.actors.items()}
        assert len(pids) == 3
        assert wait_until(lambda: (c.tick(0.5), not executor.actors)[1], 60)  # the loop's wait parks them
        assert wait_until(lambda: not any(psutil.pid_exists(p) for p in pids.values()), 30)
        assert {v.info.name: str(v.status) for v in c.list_nodes()} == dict.fromkeys(pids, "idle")
        handle = executor.probe("sim-8gb")
        assert executor.wait(5.0) == [(handle, 0)] and not executor.actors  # no actor asked, none started
        again = c.render(demo_job(steps=2, seeds=1))
        assert again.status == "done" and len(again.outputs) == len(first.outputs) == 4
        assert set(executor.actors) & set(pids)  # started again where the job ran
        new = {name: ray.get(actor.pid.remote(), timeout=60) for name, actor in executor.actors.items()}
        assert not set(new.values()) & set(pids.values())
        name = lambda p: Path(p).name  # noqa: E731
        for a, b in zip(sorted(first.outputs, key=name), sorted(again.outputs, key=name), strict=True):
            assert np.abs(pixels(a) - pixels(b)).max() <= 1  # batches may differ: the odd pixel by 1/255
    finally:
        executor.shutdown()


@pytest.mark.slow
def test_a_node_whose_actor_died_is_answered_by_a_new_actor_not_the_cluster_view(embedded) -> None:
    """An actor that died under a call is dropped and its node is lost: the next probe starts a new
    actor there and only its answer brings the node back (Ray's cluster view still lists a PC killed a
    moment ago, so it cannot say the node is back; and a dead actor is never parked as if idle)."""
    import os
    import signal

    from farm.contracts.errors import NodeLost
    from farm.runtime.executor import RayExecutor

    executor = RayExecutor(embedded.nodes(), park_s=600.0)

    def answer(handle: object) -> object:
        for _ in range(120):
            for h, outcome in executor.wait(1.0):
                if h is handle:
                    return outcome
        raise AssertionError("the probe was never answered")

    try:
        pid = answer(executor.probe("sim-8gb"))
        assert isinstance(pid, int) and pid > 0
        os.kill(pid, signal.SIGKILL)  # the worker dies, as with its PC
        assert isinstance(answer(executor.probe("sim-8gb")), NodeLost)
        assert "sim-8gb" in executor.lost and "sim-8gb" not in executor.actors  # dropped, not parked later
        again = answer(executor.probe("sim-8gb"))
        assert isinstance(again, int) and again not in (0, pid)  # a new actor's process answered
        assert "sim-8gb" not in executor.lost
    finally:
        executor.shutdown()
