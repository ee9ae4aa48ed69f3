"""The scheduler benchmark's lower bound (`farm.runtime.simulate.lower_bound`) against brute force:
on small cases every assignment of samples to nodes is tried, each node running its samples of a job
in the best split into batches and memory modes its budget allows; the bound is never above the best
makespan found, and equals it where the work divides evenly."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.contracts.domain import NodeInfo
from farm.core import costmodel
from farm.core.costmodel import Shape
from farm.core.speed import load_seconds, reference_decode_seconds, reference_step_seconds, streamed_step_seconds
from farm.runtime.simulate import SimJob, SimNode, lower_bound

HY = Shape("hunyuanvideo15", 480, 320, 61, dtype="fp8")  # no per-step overhead: batching gains nothing
HY16 = Shape("hunyuanvideo15", 480, 320, 61)  # 16-bit weights: no 8 GiB card holds it
SHAPES = [Shape("sd15", 512, 512), Shape("sdxl", 1024, 1024), Shape("wan21", 832, 480, 81, dtype="fp8"), HY]


def batch_seconds(job: SimJob, node: SimNode, batch: int) -> float:
    """One shard of `batch` samples on the node, in its fastest mode that holds it (inf: none does)."""
    best = float("inf")
    for mode in costmodel.MODES:
        if costmodel.max_batch(job.shape, node.info.vram_gib, mode, batch) < batch:
            continue
        streamed = streamed_step_seconds(job.shape) if mode.streamed else 0.0
        t = job.steps * (reference_step_seconds(job.shape, batch) / node.true_speed + streamed)
        best = min(best, t + reference_decode_seconds(job.shape, batch, mode.tiled) / node.true_speed)
    return best


def samples_seconds(job: SimJob, node: SimNode, count: int) -> float:
    """`count` samples of a job on a node, split into the best batches (dynamic programming)."""

    @cache
    def best(k: int) -> float:
        return 0.0 if k == 0 else min(best(k - b) + batch_seconds(job, node, b) for b in range(1, k + 1))

    return best(count)


def brute_force(nodes: Sequence[SimNode], jobs: Sequence[SimJob]) -> float:
    """The shortest makespan over every assignment of every sample to a node, each node loading each
    model it runs once (no hand-offs, no dispatch)."""
    samples = [j for j in jobs for _ in range(j.samples)]
    best = float("inf")
    for assignment in itertools.product(range(len(nodes)), repeat=len(samples)):
        makespan = 0.0
        for n, node in enumerate(nodes):
            busy = 0.0
            models = {}
            for job in jobs:
                count = sum(1 for s, a in zip(samples, assignment) if a == n and s is job)
                if count:
                    busy += samples_seconds(job, node, count)
                    models[job.model] = load_seconds(job.shape)
            makespan = max(makespan, busy + sum(models.values()))
        best = min(best, makespan)
    return best


def card(name: str, vram: float, speed: float) -> SimNode:
    return SimNode(NodeInfo(name, vram, speed), speed)


def test_two_equal_cards_and_an_even_number_of_videos_meet_the_bound() -> None:
    nodes = [card("a", 24, 1.0), card("b", 24, 1.0)]
    jobs = [SimJob("v", "hy", HY, 4, 20)]
    assert lower_bound(nodes, jobs).value == pytest.approx(brute_force(nodes, jobs), rel=1e-6)


def test_a_card_twice_as_fast_takes_two_videos_to_the_slow_cards_one_and_the_bound_says_so() -> None:
    nodes = [card("slow", 24, 1.0), card("fast", 24, 2.0)]
    jobs = [SimJob("v", "hy", HY, 3, 20)]
    assert lower_bound(nodes, jobs).value == pytest.approx(brute_force(nodes, jobs), rel=1e-6)


def test_one_long_sample_is_bounded_by_the_fastest_card_that_holds_it() -> None:
    nodes = [card("small", 8, 9.0), card("big", 24, 1.0), card("mid", 24, 1.5)]
    jobs = [SimJob("v", "hy", HY16, 1, 20)]
    assert costmodel.best_fit(HY16, 8, 1) is None  # the fast small card cannot hold it
    bound = lower_bound(nodes, jobs)
    assert bound.sample == pytest.approx(brute_force(nodes, jobs), rel=1e-6)
    assert bound.value == pytest.approx(bound.sample)


def test_a_job_only_big_cards_hold_is_bounded_by_their_speed_not_the_farms() -> None:
    nodes = [card("small", 8, 20.0), card("big", 24, 1.0)]
    jobs = [SimJob("v", "hy", HY16, 2, 20), SimJob("i", "sd15", SHAPES[0], 2, 20)]
    bound = lower_bound(nodes, jobs)
    assert bound.eligible > 5 * bound.work / 2  # the small card's speed does not help the videos
    assert bound.value <= brute_force(nodes, jobs) * (1 + 1e-9)


def test_the_loads_every_schedule_pays_raise_the_bound_and_keep_it_below_the_optimum() -> None:
    # Two cards, two models: a card that runs both loads both, so the best plan gives each card one.
    nodes = [card("a", 24, 1.0), card("b", 24, 1.0)]
    jobs = [SimJob("v", "hy", HY, 2, 10), SimJob("w", "wan", SHAPES[2], 2, 30)]
    bound = lower_bound(nodes, jobs)
    optimum = brute_force(nodes, jobs)
    assert bound.loads > bound.without_loads + min(load_seconds(j.shape) for j in jobs)
    assert bound.value <= optimum * (1 + 1e-9)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([8, 12, 16, 24]), st.floats(0.5, 4.0)), min_size=2, max_size=3),
       st.lists(st.tuples(st.sampled_from(range(len(SHAPES))), st.integers(1, 3), st.integers(2, 30)),
                min_size=1, max_size=2))
def test_the_bound_is_never_above_the_brute_force_optimum(cards: list, kinds: list) -> None:
    nodes = [card(f"n{i}", vram, speed) for i, (vram, speed) in enumerate(cards)]
    jobs = [SimJob(f"j{i}", f"m{k}", SHAPES[k], samples, steps) for i, (k, samples, steps) in enumerate(kinds)
            if any(costmodel.best_fit(SHAPES[k], vram, 1) for vram, _ in cards)]
    if not jobs or sum(j.samples for j in jobs) > 5:
        return
    bound = lower_bound(nodes, jobs)
    optimum = brute_force(nodes, jobs)
    assert bound.value <= optimum * (1 + 1e-9)
    assert min(bound.work, bound.eligible, bound.weighted, bound.sample) > 0
