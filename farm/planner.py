"""The pure planner: turns a job and the node table into shards, and ready segments into assignments.

Two decisions, both pure functions of plain tables so they are tested without Ray or torch:

* `shard_job` (once, at admission): the job goes only to nodes whose VRAM holds one sample in some
  memory mode. Each sample goes to the node where it would finish first, counting the node's queued
  home work and, where it does not hold the model, the load; on idle nodes that is a share
  proportional to speed. A node's share is cut into shards of the largest batch its budget holds,
  and each shard into segments that take about `segment_seconds` on it (at least two).
* `plan_tick` (every tick): each idle node takes one ready segment; `ready` comes in queue order
  (`farm.queue`). A node's own shards go first (the batch and segment length were sized for it);
  any other waiting segment then goes to an idle node it fits, preferring one that already holds
  its model, then the fastest. So no node idles while a segment that fits it waits.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from farm import costmodel
from farm.catalog import ModelInfo
from farm.costmodel import Fit, Shape
from farm.ids import shard_id
from farm.model import Assignment, JobSpec, NodeInfo, NodeState, ReadySegment, Shard
from farm.speed import SpeedBook, load_seconds

# Target duration of one segment: bounds the work a crash loses and how long an owner waits to get
# the GPU back, while keeping hand-offs (a checkpoint each) rare.
SEGMENT_SECONDS = 30.0
# No cap on steps per segment by default: the length comes from SEGMENT_SECONDS.
DEFAULT_SEGMENT_STEPS: int | None = None


@dataclass(frozen=True)
class PlanContext:
    """What the planner knows beyond the node table.

    speeds        learned seconds per step per node and family (`SpeedBook.observe`)
    backlog       seconds of home work each node already has queued ahead of this job
    loaded        models each node holds in memory (a node without the model pays a load)
    peak_factors  per-node corrections of the cost model (`costmodel.peak_correction`)
    """

    speeds: SpeedBook = field(default_factory=SpeedBook)
    segment_seconds: float = SEGMENT_SECONDS
    backlog: Mapping[str, float] = field(default_factory=dict)
    loaded: Mapping[str, frozenset[str]] = field(default_factory=dict)
    peak_factors: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Demand:
    """What sharding needs of a job: which model, its costed shape, its steps and sample indices."""

    model: str
    shape: Shape
    steps: int
    samples: tuple[int, ...]


def demand_of(job: JobSpec, model: ModelInfo) -> Demand:
    shape = Shape(model.profile, *model.costed_size(job.width, job.height))
    return Demand(job.model, shape, job.steps, tuple(s.index for s in job.samples()))


def segment_bounds(steps: int, max_steps: int | None = None) -> tuple[tuple[int, int], ...]:
    """Cut `steps` into at least two near-equal contiguous ranges of at most `max_steps` steps."""
    if steps < 2:
        raise ValueError("a shard needs at least 2 steps to run as two segments")
    count = max(2, math.ceil(steps / max(1, max_steps))) if max_steps else 2
    cuts = [round(i * steps / count) for i in range(count + 1)]
    return tuple((a, b) for a, b in zip(cuts, cuts[1:]))


def segment_steps(step_seconds: float, target_seconds: float = SEGMENT_SECONDS) -> int:
    """How many steps of `step_seconds` make a segment of about `target_seconds` (at least one)."""
    return max(1, round(target_seconds / step_seconds))


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` items by `weights` with the largest-remainder method (sums exactly to total)."""
    if total == 0 or not weights:
        return [0] * len(weights)
    scale = total / sum(weights)
    exact = [w * scale for w in weights]
    shares = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (shares[i] - exact[i], -weights[i]))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def _fits(demand: Demand, nodes: Sequence[NodeInfo], context: PlanContext) -> list[tuple[NodeInfo, Fit]]:
    """Nodes that hold at least one sample, with the largest batch each holds (admission: raises
    DoesNotFit naming the VRAM the job needs when there are none)."""
    want = len(demand.samples)
    fits = [(n, costmodel.best_fit(demand.shape, n.vram_gib, want, context.peak_factors.get(n.name, 1.0))) for n in nodes]
    found = [(n, f) for n, f in fits if f is not None]
    if not found:
        raise costmodel.does_not_fit(demand.shape, [n.vram_gib for n in nodes])
    return found


def split_samples(demand: Demand, fits: Sequence[tuple[NodeInfo, Fit]], context: PlanContext) -> list[int]:
    """How many samples each node gets: each sample goes where it would finish first.

    A node's clock starts at its backlog, plus the model load where it does not hold the model; each
    sample adds its steps at the node's learned (or declared) speed and largest batch. With no
    backlog and no loads this is a share proportional to speed, to within one sample.
    """
    heap = []
    per_sample = []
    for i, (node, fit) in enumerate(fits):
        seconds = context.speeds.seconds_per_sample_step(node, demand.shape, fit.batch) * demand.steps
        start = context.backlog.get(node.name, 0.0)
        if demand.model not in context.loaded.get(node.name, frozenset()):
            start += load_seconds(demand.shape)
        per_sample.append(seconds)
        heap.append((start + seconds, -node.speed, i))
    heapq.heapify(heap)
    counts = [0] * len(fits)
    for _ in demand.samples:
        finish, order, i = heapq.heappop(heap)
        counts[i] += 1
        heapq.heappush(heap, (finish + per_sample[i], order, i))
    return counts


def plan_shards(job_id: str, demand: Demand, nodes: Sequence[NodeInfo], max_segment_steps: int | None = None,
                context: PlanContext = PlanContext()) -> list[Shard]:
    """Shards of `demand` for `nodes` (see the module docstring); raises DoesNotFit."""
    fits = _fits(demand, nodes, context)
    shards: list[Shard] = []
    cursor = 0
    for (node, fit), count in zip(fits, split_samples(demand, fits, context)):
        if count == 0:
            continue
        for size in apportion(count, [1.0] * math.ceil(count / fit.batch)):
            sized = costmodel.best_fit(demand.shape, node.vram_gib, size, context.peak_factors.get(node.name, 1.0))
            assert sized is not None and sized.batch == size  # a smaller batch than a fitting one fits
            per = segment_steps(context.speeds.step_seconds(node, demand.shape, size), context.segment_seconds)
            cap = min(per, max_segment_steps) if max_segment_steps else per
            shards.append(
                Shard(
                    id=shard_id(job_id, len(shards)),
                    job_id=job_id,
                    sample_indices=demand.samples[cursor : cursor + size],
                    home=node.name,
                    bounds=segment_bounds(demand.steps, cap),
                    need_gib=sized.need_gib,
                    memory_mode=str(sized.mode),
                )
            )
            cursor += size
    return shards


def shard_job(
    job_id: str,
    job: JobSpec,
    model: ModelInfo,
    nodes: Sequence[NodeInfo],
    max_segment_steps: int | None = DEFAULT_SEGMENT_STEPS,
    *,
    context: PlanContext = PlanContext(),
) -> list[Shard]:
    """Group the job's samples into shards sized for each node's VRAM and speed.

    `max_segment_steps` caps the steps per segment (None: segments of about
    `context.segment_seconds`). Raises DoesNotFit when no node can hold even one sample.
    """
    return plan_shards(job_id, demand_of(job, model), nodes, max_segment_steps, context)


def shard_seconds(shard: Shard, shape: Shape, from_step: int, node: NodeInfo, speeds: SpeedBook) -> float:
    """Expected seconds of a shard's denoising from step `from_step` to the end on `node`."""
    return (shard.bounds[-1][1] - from_step) * speeds.step_seconds(node, shape, shard.batch)


def backlog_seconds(pending: Iterable[tuple[Shard, Shape, int]], nodes: Sequence[NodeInfo],
                    speeds: SpeedBook) -> dict[str, float]:
    """Seconds of home work each node has queued: (shard, shape, next step) of unfinished shards."""
    by_name = {n.name: n for n in nodes}
    out = {n.name: 0.0 for n in nodes}
    for shard, shape, step in pending:
        if shard.home in by_name:
            out[shard.home] += shard_seconds(shard, shape, step, by_name[shard.home], speeds)
    return out


def _fits_node(seg: ReadySegment, node: NodeState) -> bool:
    return seg.need_gib * node.peak_factor <= costmodel.usable_gib(node.info.vram_gib)


def plan_tick(ready: Sequence[ReadySegment], nodes: Sequence[NodeState]) -> list[Assignment]:
    """One decision per idle node; `ready` is in queue order (earlier first).

    Home segments go first, so a node's own next segment is never taken by a neighbour that was
    merely faster to ask; then each waiting segment, in queue order, goes to an idle node it fits,
    one that holds its model first, then the fastest.
    """
    idle = {n.info.name: n for n in nodes if n.online and not n.busy}
    taken: set[tuple[str, int]] = set()
    out: list[Assignment] = []

    def assign(name: str, seg: ReadySegment) -> None:
        out.append(Assignment(name, seg.shard_id, seg.index))
        taken.add((seg.shard_id, seg.index))
        del idle[name]

    for seg in ready:
        home = idle.get(seg.home)
        if home is not None and _fits_node(seg, home):
            assign(seg.home, seg)
    for seg in ready:
        if not idle:
            break
        if (seg.shard_id, seg.index) in taken:
            continue
        candidates = [n for n in idle.values() if _fits_node(seg, n)]
        if candidates:
            best = min(candidates, key=lambda n: (seg.model not in n.loaded, -n.info.speed, n.info.name))
            assign(best.info.name, seg)
    return out
