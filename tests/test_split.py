"""How the planner splits a queue of jobs over nodes (`planner.split_samples` through `plan_queue`):
whole batches while much work is left to place, on the nodes that hold a job's model."""

from __future__ import annotations

from farm.contracts.domain import NodeInfo
from farm.core import costmodel, planner
from farm.core.costmodel import Shape
from farm.core.planner import Demand, PlanContext
from farm.core.speed import SpeedBook

CARDS = [(8, 1.0), (12, 1.6), (16, 2.2), (24, 3.5)]
SIXTEEN = [NodeInfo(f"n{i:02d}-{vram}g", vram, speed) for i, (vram, speed) in enumerate(CARDS * 4)]
SD15 = Shape("sd15", 512, 512)


def test_a_queue_of_image_jobs_runs_in_near_full_batches() -> None:
    # Spread one sample at a time (where each would finish first), each of twelve jobs reached every
    # one of 16 nodes in small batches, each paying a whole batch's per-step cost for a few samples.
    jobs = [(f"j{i}", Demand(f"m{i % 3}", SD15, 30, tuple(range(150)))) for i in range(12)]
    plans = planner.plan_queue(jobs, SIXTEEN)
    by_name = {n.name: n for n in SIXTEEN}
    planned = ideal = 0.0
    for shards in plans.values():
        for s in shards:
            node = by_name[s.home]
            full = costmodel.best_fit(SD15, node.vram_gib, 150)
            assert full is not None
            planned += planner.shard_seconds(s, SD15, 0, node, SpeedBook())
            ideal += s.batch * SpeedBook().seconds_per_sample_step(node, SD15, full.batch) * 30
    assert sorted(i for s in plans["j0"] for i in s.sample_indices) == list(range(150))
    assert planned <= 1.2 * ideal  # one sample at a time: 1.36 times


def test_a_job_stays_on_the_nodes_that_hold_its_model_while_others_have_work() -> None:
    # Every other node would load the video model for one sample; the image work after it fills them.
    nodes = SIXTEEN[:4]
    video = ("v", Demand("video", Shape("ltxv", 768, 512, 121), 40, tuple(range(3))))
    images = [(f"i{i}", Demand("img", SD15, 30, tuple(range(120)))) for i in range(6)]
    context = PlanContext(loaded={"n03-24g": frozenset({"video"}), "n02-16g": frozenset({"img"}),
                                  "n01-12g": frozenset({"img"}), "n00-8g": frozenset({"img"})})
    plans = planner.plan_queue([video, *images], nodes, context=context)
    assert {s.home for s in plans["v"]} == {"n03-24g"}
    assert sum(s.batch for s in plans["v"]) == 3


def test_alone_a_job_still_reaches_every_node_that_speeds_it_up() -> None:
    counts = {s.home: s.batch for s in planner.plan_shards("j", Demand("m", SD15, 30, tuple(range(12))), SIXTEEN[:4])}
    assert set(counts) == {n.name for n in SIXTEEN[:4]}
