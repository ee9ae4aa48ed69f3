"""Queue order: priority, then FIFO per owner, with owners taking turns by GPU-seconds used."""

from __future__ import annotations

from farm.contracts.domain import ReadySegment
from farm.core.order import QueuedJob, order_jobs, order_ready


def test_higher_priority_first_then_first_in_first_out() -> None:
    jobs = [QueuedJob("a", "ann", 0, 1), QueuedJob("b", "ann", 5, 2), QueuedJob("c", "ann", 0, 0)]
    assert order_jobs(jobs) == ["b", "c", "a"]


def test_owners_take_turns_by_gpu_seconds_used() -> None:
    jobs = [QueuedJob(f"a{i}", "ann", 0, i, 100.0) for i in range(3)] + [QueuedJob("b0", "bob", 0, 10, 100.0)]
    assert order_jobs(jobs) == ["a0", "b0", "a1", "a2"]
    # bob already used an hour of GPU time: ann's queued work is charged first
    assert order_jobs(jobs, used={"bob": 3600.0}) == ["a0", "a1", "a2", "b0"]


def test_a_heavier_weight_earns_a_larger_share() -> None:
    jobs = ([QueuedJob(f"a{i}", "ann", 0, i, 100.0) for i in range(4)]
            + [QueuedJob(f"b{i}", "bob", 0, 10 + i, 100.0) for i in range(4)])
    order = order_jobs(jobs, weights={"ann": 3.0})
    assert order[:4].count("b0") + order[:4].count("b1") <= 1


def test_fair_share_never_reorders_one_owners_jobs_or_crosses_priorities() -> None:
    jobs = [QueuedJob("urgent", "bob", 1, 99, 1e6), QueuedJob("x", "ann", 0, 1, 10.0), QueuedJob("y", "ann", 0, 2, 1.0)]
    assert order_jobs(jobs, used={"bob": 1e9}) == ["urgent", "x", "y"]


def test_ready_segments_follow_their_jobs_order() -> None:
    ready = [ReadySegment("j2/s0", 0, "n", 1.0), ReadySegment("j1/s1", 3, "n", 1.0, job_id="j1"),
             ReadySegment("j3/s0", 0, "n", 1.0), ReadySegment("j1/s0", 1, "n", 1.0)]
    ordered = order_ready(ready, ["j1", "j2"])
    assert [s.shard_id for s in ordered] == ["j1/s1", "j1/s0", "j2/s0", "j3/s0"]
