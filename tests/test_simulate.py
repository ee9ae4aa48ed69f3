"""The farm simulator that bench/scheduler.py runs (the real coordinator on a virtual clock): it must
catch a cheating `decide`, and its bound must be a bound."""

from __future__ import annotations

import pytest

from farm.contracts.domain import NodeInfo, Shard
from farm.core.actions import Record
from farm.core.apply import apply
from farm.core.baselines import equal_split, one_sample_per_task
from farm.core.costmodel import Shape
from farm.core.decide import decide, start
from farm.core.events import ShardsPlanned
from farm.core.speed import load_seconds
from farm.runtime.simulate import SimJob, SimNode, lower_bound, sample_seconds, simulate, unit_seconds

NODES = [SimNode(NodeInfo(f"n{v}", v, s), s) for v, s in [(8, 1.0), (12, 1.6), (16, 2.2), (24, 3.5)]]
SD = Shape("sd15", 512, 512)
WAN = Shape("wan21", 832, 480, 81, dtype="fp8")
JOBS = [
    SimJob("img", "sd15", SD, 120, 30, owner="a"),
    SimJob("vid", "wan", WAN, 6, 50, owner="b"),
    SimJob("img2", "sdxl", Shape("sdxl", 1024, 1024), 40, 30, owner="a"),
]


@pytest.mark.parametrize("policy", [decide, equal_split, one_sample_per_task])
def test_every_policy_finishes_no_faster_than_the_bound(policy) -> None:
    outcome = simulate(NODES, JOBS, policy)
    assert outcome.makespan >= lower_bound(NODES, JOBS).value
    assert outcome.loads >= 1 and outcome.jobs_done == len(JOBS) and outcome.duplicated == 0


def test_this_scheduler_beats_the_equal_split_on_a_mixed_cluster() -> None:
    farm = simulate(NODES, JOBS)
    equal = simulate(NODES, JOBS, equal_split)
    assert farm.makespan * 1.3 < equal.makespan
    assert farm.makespan < 1.25 * lower_bound(NODES, JOBS).value


def test_the_bound_counts_work_over_speed_and_the_longest_sample() -> None:
    one = [SimNode(NodeInfo("a", 24, 2.0), 2.0), SimNode(NodeInfo("b", 24, 2.0), 2.0)]
    job = SimJob("v", "wan", WAN, 3, 50)
    step, decode = unit_seconds(job, one[0])
    bound = lower_bound(one, [job])
    assert bound.work == pytest.approx(3 * (50 * step + decode) / 2)
    assert bound.sample == pytest.approx(load_seconds(WAN) + sample_seconds(job, one[0]))  # begun after a load
    assert bound.loads == pytest.approx(bound.work + load_seconds(WAN), rel=1e-3)  # both cards load the model
    # a job only the 24 GiB node holds is bounded by that node alone
    only_big = SimJob("h", "hy", Shape("hunyuanvideo15", 480, 320, 61), 2, 50)
    mixed = [SimNode(NodeInfo("small", 8, 10.0), 10.0), SimNode(NodeInfo("big", 24, 1.0), 1.0)]
    assert unit_seconds(only_big, mixed[0]) is None
    step, decode = unit_seconds(only_big, mixed[1])
    assert lower_bound(mixed, [only_big]).eligible == pytest.approx(2 * (50 * step + decode))


def greedy(state, now):
    """A cheating `decide`: every sample of a job in one shard on the first node, held whole."""
    if state.replan:
        job = next(iter(state.jobs.values()))
        shard = Shard(f"{job.id}/s0", job.id, job.unplanned, "n8", ((0, job.spec.steps),), 1.0, "full",
                      (("full", 1.0),))
        planned = ShardsPlanned(now, ((job.id, (), (shard,)),))
        return [Record(planned), start(apply(state, planned), "n8", shard.id, "full")]
    return []


def test_the_engine_refuses_a_task_beyond_the_budget() -> None:
    with pytest.raises(AssertionError, match="over budget"):
        simulate(NODES, JOBS[:1], greedy)


def test_the_engine_reports_a_policy_that_leaves_work_undone() -> None:
    with pytest.raises(RuntimeError, match="unfinished"):
        simulate(NODES, JOBS[:1], lambda state, now: [])
