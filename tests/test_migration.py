"""Migration at segment boundaries: a shard's remaining segments move to a node predicted to finish
them sooner, hand-off and model load included; the move is a recorded event the job's activity shows;
a whole simulated run with moves still renders every step of every sample exactly once."""

from __future__ import annotations

import pytest

from farm.contracts.domain import NodeInfo, NodeState, ReadySegment, Shard
from farm.core import model_lists, planner, views
from farm.core.actions import Record, StartSegment
from farm.core.apply import apply
from farm.core.costmodel import Shape, mode_needs
from farm.core.decide import decide, finish_seconds
from farm.core.events import (
    JobSubmitted,
    NodeJoined,
    NodeReady,
    SegmentFinished,
    SegmentStarted,
    ShardMoved,
    ShardsPlanned,
)
from farm.core.speed import checkpoint_bytes, load_seconds
from farm.core.state import FarmState
from farm.runtime.simulate import SimJob, SimNode, simulate

WAN = Shape("wan21", 832, 480, 81, dtype="fp8")


def node(name: str, speed: float, loaded: frozenset[str] = frozenset()) -> NodeState:
    return NodeState(NodeInfo(name, 24, speed), False, True, loaded)


def seg(shard: str, home: str, index: int = 1) -> ReadySegment:
    return ReadySegment(shard, index, home, 2.0, shard.split("/")[0], "m")


def by_speed(seconds: float, handoff: float = 0.0):
    """A finish estimate: `seconds` of work at speed 1, plus `handoff` anywhere but home."""
    def finish(s: ReadySegment, n: NodeState) -> float:
        return seconds / n.info.speed + (0.0 if n.info.name == s.home else handoff)
    return finish


def test_a_free_node_that_finishes_sooner_takes_the_shard_over() -> None:
    nodes = [node("slow", 1.0), node("fast", 3.5)]
    (a,) = planner.plan_tick([seg("j/s0", "slow")], nodes, finish=by_speed(300))
    assert a.node == "fast"


def test_a_shard_stays_home_when_the_hand_off_eats_the_gain() -> None:
    nodes = [node("slow", 1.0), node("quick", 1.4)]
    (a,) = planner.plan_tick([seg("j/s0", "slow")], nodes, finish=by_speed(300))
    assert a.node == "quick"  # 300 s against 214 s: worth it
    (a,) = planner.plan_tick([seg("j/s0", "slow")], nodes, finish=by_speed(300, handoff=60))
    assert a.node == "slow"  # 274 s is not MOVE_GAIN sooner than 300 s
    (a,) = planner.plan_tick([seg("j/s0", "slow")], nodes)
    assert a.node == "slow"  # without predictions a shard stays home


def test_the_shard_with_the_most_time_left_gets_the_one_fast_node() -> None:
    nodes = [node("a", 1.0), node("b", 1.0), node("fast", 4.0)]
    left = {"short/s0": 60.0, "long/s0": 600.0}

    def finish(s: ReadySegment, n: NodeState) -> float:
        return left[s.shard_id] / n.info.speed

    out = planner.plan_tick([seg("short/s0", "a"), seg("long/s0", "b")], nodes, finish=finish)
    assert {(x.shard_id, x.node) for x in out} == {("long/s0", "fast"), ("short/s0", "a")}


def test_a_node_busy_with_its_own_work_is_never_taken_from_it() -> None:
    nodes = [node("slow", 1.0), node("fast", 4.0)]
    out = planner.plan_tick([seg("j/s0", "slow"), seg("k/s0", "fast", index=0)], nodes, finish=by_speed(300))
    assert {(x.shard_id, x.node) for x in out} == {("j/s0", "slow"), ("k/s0", "fast")}


def at_a_boundary() -> FarmState:
    """A video shard homed on a slow card that just finished its first of four segments; a card 4
    times faster is idle and holds the model."""
    spec = SimJob("j", "wan", WAN, 1, 40).spec()
    state = FarmState()
    for info in (NodeInfo("slow", 24, 1.0), NodeInfo("fast", 24, 4.0)):
        state = apply(apply(state, NodeJoined(0.0, info)), NodeReady(0.0, info.name))
    state = apply(state, JobSubmitted(0.0, "j", spec, WAN))
    needs = mode_needs(WAN, 1)
    shard = Shard("j/s0", "j", (0,), "slow", ((0, 10), (10, 20), (20, 30), (30, 40)), needs[0][1], needs[0][0], needs)
    state = apply(state, ShardsPlanned(0.0, (("j", (), (shard,)),)))
    state = apply(state, SegmentStarted(1.0, "j/s0", 0, "slow", 0, 10, needs[0][0]))
    return apply(state, SegmentFinished(200.0, "j/s0", 0, "slow", 0, 10, False, "ck", None, 199.0, 190.0,
                                        "gpu", needs[0][0], ()))


def test_decide_records_the_move_with_both_predictions_before_it_starts_the_segment() -> None:
    state = at_a_boundary()
    state = apply(state, SegmentFinished(201.0, "other/s0", 0, "fast", 0, 1, False, None, None, 1.0, 1.0, "gpu",
                                         "full", ("wan",)))  # stale for a shard it never ran; it now holds wan
    assert state.nodes["fast"].loaded == frozenset({"wan"})
    actions = [a for a in decide(state, 202.0) if isinstance(a, (Record, StartSegment))]
    moves = [a.event for a in actions if isinstance(a, Record) and isinstance(a.event, ShardMoved)]
    assert len(moves) == 1 and moves[0].node == "fast"
    assert "predicted finish" in moves[0].reason and "on slow" in moves[0].reason
    starts = [a for a in actions if isinstance(a, StartSegment)]
    assert [(s.node, s.index, s.start, s.checkpoint) for s in starts] == [("fast", 1, 10, "ck")]
    assert actions.index(Record(moves[0])) < actions.index(starts[0])
    after = apply(state, moves[0])
    assert after.jobs["j"].shards["j/s0"].shard.home == "fast"
    (line,) = views.activity(state, after, moves[0])
    assert line[0] == "shard_moved" and line[1] == "j" and line[2] == "fast" and "predicted finish" in line[3]


def test_the_prediction_counts_the_load_and_the_checkpoint_hand_off() -> None:
    state = at_a_boundary()
    ready = seg("j/s0", "slow")
    slow = NodeState(state.nodes["slow"].info, False, True, frozenset({"wan"}))
    cold = NodeState(state.nodes["fast"].info, False, True, frozenset())
    warm = NodeState(state.nodes["fast"].info, False, True, frozenset({"wan"}))
    assert finish_seconds(state, ready, cold) - finish_seconds(state, ready, warm) == pytest.approx(load_seconds(WAN))
    # the node that ran the last segment needs no hand-off; another one does
    shard = state.jobs["j"].shards["j/s0"].shard
    assert finish_seconds(state, ready, slow) == pytest.approx(
        planner.shard_seconds(shard, WAN, 10, slow.info, state.speeds))
    hand_off = model_lists.transfer_seconds(checkpoint_bytes(WAN, 1), 0.0)
    assert finish_seconds(state, ready, warm) == pytest.approx(
        planner.shard_seconds(shard, WAN, 10, warm.info, state.speeds) + hand_off)


def test_a_moved_shard_that_runs_or_is_done_stays_where_it_is() -> None:
    state = at_a_boundary()
    running = apply(state, SegmentStarted(202.0, "j/s0", 1, "slow", 10, 20, "full"))
    assert apply(running, ShardMoved(203.0, "j/s0", "fast", "")).jobs == running.jobs
    assert apply(state, ShardMoved(203.0, "j/s0", "nowhere", "")).jobs["j"].shards["j/s0"].shard.home == "slow"


def test_a_fast_card_that_frees_up_takes_over_the_slow_cards_video() -> None:
    # Two videos, one per card; the fast card finishes first and takes over the rest of the slow
    # card's at its next boundary. The engine asserts every step of every sample runs once, in order.
    nodes = [SimNode(NodeInfo("slow", 24, 1.0), 1.0), SimNode(NodeInfo("fast", 24, 1.6), 1.6)]
    job = SimJob("v", "wan", WAN, 2, 50)
    out = simulate(nodes, [job])
    assert out.jobs_done == 1 and out.duplicated == 0 and out.handoffs >= 1
    alone_on_slow = simulate(nodes[:1], [SimJob("v", "wan", WAN, 1, 50)]).makespan
    assert out.makespan < 0.9 * alone_on_slow
