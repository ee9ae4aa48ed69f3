"""Liveness (pure core and runner): a node takes work only once its worker answered a health probe,
a segment its node stays silent about past its lease is lost and resumes elsewhere from its
checkpoint, a node whose worker does not answer is offline with the reason and comes back by itself
when it answers again, and a rejoin always starts fresh."""

from __future__ import annotations

from test_coordinator import MemorySink, ScriptedExecutor, run_until_final, small_job

from farm.contracts.control import NodeStatus
from farm.contracts.domain import JobStatus
from farm.core import decide as decide_module
from farm.runtime.coordinator import Coordinator
from node.simulated import simulated_nodes


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def farm_with(mute: set[str] = frozenset()) -> tuple[Coordinator, ScriptedExecutor, Clock]:
    executor, clock = ScriptedExecutor(simulated_nodes()), Clock()
    executor.mute = set(mute)
    return Coordinator(executor, MemorySink(), clock=clock, max_segment_steps=2), executor, clock


def statuses(c: Coordinator) -> dict[str, NodeStatus]:
    return {v.info.name: v.status for v in c.list_nodes()}


def test_a_node_takes_work_only_after_its_worker_answers() -> None:
    c, ex, _ = farm_with(mute={"sim-24gb"})
    job_id = c.submit(small_job())
    c.tick(0)
    assert statuses(c)["sim-24gb"] == NodeStatus.STARTING
    assert "sim-24gb" not in {n for n, _ in ex.tasks}
    ex.mute.clear()
    ex.answers += [(h, True) for h in ex.unanswered]
    ex.unanswered.clear()
    run_until_final(c, job_id)
    assert statuses(c)["sim-24gb"] == NodeStatus.IDLE


def test_a_probe_unanswered_in_time_makes_the_node_offline_until_it_answers() -> None:
    c, ex, clock = farm_with(mute={"sim-8gb"})
    c.tick(0)
    clock.now += decide_module.STARTUP_TIMEOUT_S + 1
    c.tick(0)
    view = {v.info.name: v for v in c.list_nodes()}["sim-8gb"]
    assert view.status == NodeStatus.OFFLINE and view.pause_reason.startswith("Ray worker unreachable")
    clock.now += decide_module.PROBE_EVERY_S
    c.tick(0)  # probed again, no answer yet: still offline, and said once
    assert statuses(c)["sim-8gb"] == NodeStatus.OFFLINE
    ex.mute.clear()  # the worker is reachable again (a port opened): the probe that waited is answered
    ex.answers += [(h, True) for h in ex.unanswered]
    c.tick(0)
    assert statuses(c)["sim-8gb"] == NodeStatus.IDLE
    lost = [e for e in c.events(0) if e.kind == "node_lost" and e.node == "sim-8gb"]
    assert len(lost) == 1  # said once, however often it was probed


def test_a_silent_segment_is_lost_after_its_lease_and_resumes_elsewhere() -> None:
    c, ex, clock = farm_with()
    job_id = c.submit(small_job(prompts=["a"], seeds=1, steps=4))
    c.tick(0)
    ex.hold = True
    c.tick(0)
    node, task = ex.tasks[-1]
    assert c.state.nodes[node].running == task.shard_id
    ex.pending.clear()  # the silent node's reply never comes
    ex.hold = False
    clock.now += 10_000  # far past any lease
    c.tick(0)
    lost = [e for e in c.events(0) if e.kind == "node_lost" and e.node == node]
    assert lost and f"no word of {task.shard_id}" in lost[0].message
    run_until_final(c, job_id)
    resumed = [t for n, t in ex.tasks if t.shard_id == task.shard_id and t.index == task.index and n != node]
    assert resumed and resumed[0].checkpoint == task.checkpoint  # from the same checkpoint
    assert c.get_job(job_id).status == JobStatus.DONE


def test_a_rejoin_starts_fresh_and_gives_back_what_the_old_worker_ran() -> None:
    c, ex, _ = farm_with()
    job_id = c.submit(small_job(prompts=["a"], seeds=1, steps=4))
    ex.hold = True
    c.tick(0)
    c.tick(0)
    node, task = ex.tasks[-1]
    c.node_joined(next(n for n in simulated_nodes() if n.name == node))
    assert c.state.nodes[node].running == "" and not c.state.nodes[node].ready
    assert c.state.shard(task.shard_id)[1].node == ""
    ex.hold = False
    ex.pending.clear()
    run_until_final(c, job_id)
    assert c.get_job(job_id).status == JobStatus.DONE
