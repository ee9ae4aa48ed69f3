"""Replay: for random sequences of commands and node events run through the real coordinator, the
state a restarted head reads back (latest snapshot + the journal after it) equals the live state,
and the live state keeps its invariants after every step (hypothesis)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_coordinator import MemorySink, ScriptedExecutor, small_job

from farm.contracts.errors import FarmError
from farm.core.state import FarmState
from farm.runtime import store as store_module
from farm.runtime.coordinator import Coordinator
from farm.runtime.store import Store
from node.simulated import simulated_nodes

NODES = [n.name for n in simulated_nodes()]
ops = st.one_of(
    st.tuples(st.just("submit"), st.integers(1, 3), st.integers(2, 6), st.sampled_from(["ana", "ben"])),
    st.tuples(st.just("tick"), st.booleans()),
    st.tuples(st.sampled_from(["cancel", "pause", "resume", "retry"]), st.integers(0, 5)),
    st.tuples(st.just("priority"), st.integers(0, 5), st.integers(-3, 3)),
    st.tuples(st.just("move"), st.integers(0, 5), st.integers(-2, 2)),
    st.tuples(st.sampled_from(["pause_node", "resume_node", "drain_node", "left", "joined", "fail"]),
              st.sampled_from(NODES)),
)


def check_invariants(state: FarmState) -> None:
    for name, node in state.nodes.items():
        if node.running:
            found = state.shard(node.running)
            assert found is not None and found[1].node == name, f"{name} runs {node.running}, which is not on it"
    for job in state.jobs.values():
        placed = [i for s in job.shards.values() for i in s.shard.sample_indices] + list(job.unplanned)
        assert sorted(placed) == list(range(job.samples_total)), f"{job.id}: samples not partitioned"
        for s in job.shards.values():
            if s.node:
                assert state.nodes[s.node].running == s.shard.id
            assert 0 <= s.step <= s.shard.bounds[-1][1]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=1, max_size=40), st.integers(2, 30))
def test_replay_from_the_journal_equals_the_live_state(steps: list[tuple], snapshot_every: int) -> None:
    old = store_module.SNAPSHOT_EVERY
    store_module.SNAPSHOT_EVERY = snapshot_every
    try:
        with tempfile.TemporaryDirectory() as folder:
            executor = ScriptedExecutor(simulated_nodes())
            infos = {n.name: n for n in simulated_nodes()}
            clock = iter(range(10**6))
            c = Coordinator(executor, MemorySink(), store=Store(Path(folder)), clock=lambda: 1000.0 + next(clock),
                            max_segment_steps=2)
            jobs: list[str] = []
            for op in steps:
                try:
                    run(c, executor, infos, jobs, op)
                except FarmError:
                    pass  # a refused command changes nothing
                check_invariants(c.state)
            restored = Store(Path(folder)).restore(FarmState(settings=c.state.settings))
            assert restored == c.state
    finally:
        store_module.SNAPSHOT_EVERY = old


def run(c: Coordinator, executor: ScriptedExecutor, infos: dict, jobs: list[str], op: tuple) -> None:
    kind, *args = op
    job = (lambda i: jobs[i % len(jobs)] if jobs else "none")
    if kind == "submit":
        jobs.append(c.submit(small_job(prompts=[f"p{k}" for k in range(args[0])], steps=args[1], owner=args[2])))
    elif kind == "tick":
        executor.hold = args[0]
        c.tick(0)
    elif kind in ("cancel", "pause", "resume", "retry"):
        getattr(c, f"{kind}_job")(job(args[0]))
    elif kind == "priority":
        c.set_priority(job(args[0]), args[1])
    elif kind == "move":
        c.move_job(job(args[0]), args[1] or 1)
    elif kind == "left":
        c.node_left(args[0], "unplugged")
    elif kind == "joined":
        c.node_joined(infos[args[0]])
    elif kind == "fail":
        executor.fail[args[0]] = executor.fail.get(args[0], 0) + 1
    else:
        getattr(c, kind)(args[0])
