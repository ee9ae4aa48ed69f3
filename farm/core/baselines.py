"""The placements this scheduler is measured against: alternative `decide` functions (pure).

They run in the same coordinator with the same cost model, memory modes, per-node model cache,
outputs and interrupts; only where and when work goes differs, so `bench/scheduler.py` compares
placement and nothing else:

* `equal_split`: each job's samples split equally among the nodes that hold it (what most render
  managers do), batched as large as each budget allows, every shard run whole on its node in arrival
  order, no stealing, nothing learned.
* `one_sample_per_task`: one task per sample with every step, batch 1, in queue order (priority,
  then arrival) to the first idle node it fits: Ray's default placement of `num_gpus=1` tasks, made
  VRAM-aware as a user would with custom resources (plain Ray would run out of memory instead).
* `without_stage_placement`: this scheduler with every shard's decode kept in its last denoising
  segment, so a video's shards go only to cards that also hold its decode (bench/stages.py).
"""

from __future__ import annotations

import math
from dataclasses import replace

from farm.contracts.domain import Shard
from farm.contracts.ids import shard_id
from farm.core import costmodel, planner
from farm.core.actions import Action, Record
from farm.core.apply import apply
from farm.core.decide import decide, interrupts, nodes_in_order, probes, shards_in_order, start, writes
from farm.core.events import ShardsPlanned
from farm.core.state import FarmState, JobState
from farm.core.transitions import WAITING


def _whole(job_id: str, index: int, samples: tuple[int, ...], home: str, steps: int, fit: costmodel.Fit) -> Shard:
    """A shard that runs all its steps as one task."""
    return Shard(shard_id(job_id, index), job_id, samples, home, ((0, steps),), fit.need_gib, str(fit.mode),
                 ((str(fit.mode), fit.need_gib),))


def _arrivals(state: FarmState) -> list[JobState]:
    return sorted((j for j in state.jobs.values() if j.status in WAITING), key=lambda j: (-j.spec.priority, j.seq))


def _equal_plan(state: FarmState, now: float) -> ShardsPlanned:
    plans = []
    for job in _arrivals(state):
        if not job.unplanned:
            continue
        fits = [(n, costmodel.best_fit(job.shape, n.info.vram_gib, len(job.unplanned))) for n in nodes_in_order(state)]
        holders = [(n, f) for n, f in fits if f is not None]
        shards, cursor = [], 0
        counts = planner.apportion(len(job.unplanned), [1.0] * len(holders))
        for (node, fit), count in zip(holders, counts, strict=True):
            for size in planner.apportion(count, [1.0] * math.ceil(count / fit.batch)) if count else []:
                sized = costmodel.best_fit(job.shape, node.info.vram_gib, size)
                assert sized is not None
                samples = job.unplanned[cursor:cursor + size]
                index = job.next_shard + len(shards)
                shards.append(_whole(job.id, index, samples, node.info.name, job.spec.run_steps, sized))
                cursor += size
        plans.append((job.id, (), tuple(shards)))
    return ShardsPlanned(now, tuple(plans))


def equal_split(state: FarmState, now: float) -> list[Action]:
    actions: list[Action] = []
    if state.replan:
        planned = _equal_plan(state, now)
        actions.append(Record(planned))
        state = apply(state, planned)
    out = actions + probes(state, now) + interrupts(state) + writes(state)
    for node in nodes_in_order(state):
        if node.takes_work and not node.running:
            mine = next((s for j in _arrivals(state) for s in shards_in_order(j)
                         if s.shard.home == node.info.name and not s.node and not s.rendered), None)
            if mine is not None:
                out.append(start(state, node.info.name, mine.shard.id, mine.shard.memory_mode))
    return out


def one_sample_per_task(state: FarmState, now: float) -> list[Action]:
    actions: list[Action] = []
    if state.replan:
        plans = []
        for job in _arrivals(state):
            if job.unplanned:
                needs = costmodel.mode_needs(job.shape, 1)
                shards = tuple(Shard(shard_id(job.id, job.next_shard + k), job.id, (i,), "", ((0, job.spec.run_steps),),
                                     needs[0][1], needs[0][0], needs) for k, i in enumerate(job.unplanned))
                plans.append((job.id, (), shards))
        planned = ShardsPlanned(now, tuple(plans))
        actions.append(Record(planned))
        state = apply(state, planned)
    out = actions + probes(state, now) + interrupts(state) + writes(state)
    idle = [n for n in nodes_in_order(state) if n.takes_work and not n.running]
    for job in _arrivals(state):
        for s in shards_in_order(job):
            if s.node or s.rendered:
                continue
            fitting = ((n, mode) for n in idle if (mode := planner.mode_fitting(s.shard.needs, n.info.vram_gib)))
            node, mode = next(fitting, (None, None))
            if node is not None and mode is not None:
                out.append(start(state, node.info.name, s.shard.id, mode))
                idle.remove(node)
    return out


def without_stage_placement(state: FarmState, now: float) -> list[Action]:
    """`decide` with `Settings.place_stages` off: the same planner and dispatch, no decode-only segments."""
    return decide(replace(state, settings=replace(state.settings, place_stages=False)), now)
