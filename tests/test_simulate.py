"""The farm simulator that bench/scheduler.py runs: it must catch a cheating policy, and its bound
must be a bound."""

from __future__ import annotations

import pytest

from farm.contracts.domain import NodeInfo
from farm.core.costmodel import MemoryMode, Shape
from farm.runtime.baselines import EqualSplit, OneSamplePerTask
from farm.runtime.simulate import FarmPolicy, SimJob, SimNode, Task, View, lower_bound, sample_work, simulate

NODES = [SimNode(NodeInfo(f"n{v}", v, s), s) for v, s in [(8, 1.0), (12, 1.6), (16, 2.2), (24, 3.5)]]
SD = Shape("sd15", 512, 512)
WAN = Shape("wan21", 832, 480, 81, dtype="fp8")
JOBS = [
    SimJob("img", "sd15", SD, 120, 30, owner="a"),
    SimJob("vid", "wan", WAN, 6, 50, owner="b"),
    SimJob("img2", "sdxl", Shape("sdxl", 1024, 1024), 40, 30, owner="a"),
]


@pytest.mark.parametrize("policy", [FarmPolicy, EqualSplit, OneSamplePerTask])
def test_every_policy_finishes_no_faster_than_the_bound(policy: type) -> None:
    outcome = simulate(policy(), NODES, JOBS)
    assert outcome.makespan >= lower_bound(NODES, JOBS).value
    assert outcome.loads >= 1


def test_this_scheduler_beats_the_equal_split_on_a_mixed_cluster() -> None:
    farm = simulate(FarmPolicy(), NODES, JOBS)
    equal = simulate(EqualSplit(), NODES, JOBS)
    assert farm.makespan * 1.3 < equal.makespan
    assert farm.makespan < 1.25 * lower_bound(NODES, JOBS).value


def test_the_bound_counts_work_over_speed_and_the_longest_sample() -> None:
    one = [SimNode(NodeInfo("a", 24, 2.0), 2.0), SimNode(NodeInfo("b", 24, 2.0), 2.0)]
    job = SimJob("v", "wan", WAN, 3, 50)
    bound = lower_bound(one, [job])
    assert bound.work == pytest.approx(3 * sample_work(job, one) / 4.0)
    assert bound.sample == pytest.approx(sample_work(job, one) / 2.0)
    # a job only the 24 GiB node holds is bounded by that node alone
    only_big = SimJob("h", "hy", Shape("hunyuanvideo15", 480, 320, 61), 2, 50)
    mixed = [SimNode(NodeInfo("small", 8, 10.0), 10.0), SimNode(NodeInfo("big", 24, 1.0), 1.0)]
    assert lower_bound(mixed, [only_big]).eligible == pytest.approx(2 * sample_work(only_big, mixed))


class Greedy:
    """A cheating policy: puts every sample of every job on the first node in one task."""

    name = "greedy"

    def __init__(self) -> None:
        self.jobs: list[SimJob] = []

    def admit(self, job: SimJob, now: float, view: View) -> None:
        self.jobs.append(job)

    def assign(self, now: float, view: View) -> list[tuple[str, Task]]:
        if not self.jobs or view.busy:
            return []
        job = self.jobs.pop()
        return [(view.nodes[0].name, Task(job, "x", tuple(range(job.samples)), 0, job.steps,
                                          MemoryMode.FULL, 100.0))]

    def finished(self, node: str, task: Task, seconds: float, denoise_seconds: float) -> None:
        pass


def test_the_engine_refuses_a_task_beyond_the_budget() -> None:
    with pytest.raises(AssertionError, match="over budget"):
        simulate(Greedy(), NODES, JOBS[:1])


def test_the_engine_reports_a_policy_that_leaves_work_undone() -> None:
    class Lazy(Greedy):
        def assign(self, now: float, view: View) -> list[tuple[str, Task]]:
            return []

    with pytest.raises(RuntimeError, match="unfinished"):
        simulate(Lazy(), NODES, JOBS[:1])
