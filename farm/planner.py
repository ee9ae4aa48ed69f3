"""The pure planner: turns a job and the node table into shards, and ready segments into assignments.

Two decisions, both pure functions of plain tables so they are tested without Ray or torch:

* `shard_job` (once, at admission): each node gets a share of the samples proportional to its speed,
  cut into shards no larger than the batch its VRAM holds (from the cost model).
* `plan_tick` (every tick): each idle node takes one ready segment, its own shards' first (the model
  and batch it was sized for), otherwise any waiting segment whose shard fits it, so no node idles
  while work that fits it waits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from farm import costmodel
from farm.catalog import ModelInfo
from farm.ids import shard_id
from farm.model import Assignment, JobSpec, NodeInfo, NodeState, ReadySegment, Shard

DEFAULT_SEGMENT_STEPS = 8


def segment_bounds(steps: int, max_steps: int = DEFAULT_SEGMENT_STEPS) -> tuple[tuple[int, int], ...]:
    """Cut `steps` into at least two near-equal contiguous ranges of at most `max_steps` steps."""
    if steps < 2:
        raise ValueError("a shard needs at least 2 steps to run as two segments")
    count = max(2, math.ceil(steps / max(1, max_steps)))
    cuts = [round(i * steps / count) for i in range(count + 1)]
    return tuple((a, b) for a, b in zip(cuts, cuts[1:]))


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


def shard_job(
    job_id: str,
    job: JobSpec,
    model: ModelInfo,
    nodes: Sequence[NodeInfo],
    max_segment_steps: int = DEFAULT_SEGMENT_STEPS,
) -> list[Shard]:
    """Group the job's samples into shards sized for each node's VRAM and speed.

    Raises DoesNotFit when no node can hold even one sample.
    """
    width, height = model.costed_size(job.width, job.height)
    profile = model.memory
    costmodel.check_fits(profile, width, height, [n.vram_gib for n in nodes])
    fits = [(n, costmodel.max_batch(profile, n.vram_gib, width, height)) for n in nodes]
    fits = [(n, b) for n, b in fits if b > 0]
    samples = job.samples()
    shares = apportion(len(samples), [n.speed for n, _ in fits])
    bounds = segment_bounds(job.steps, max_segment_steps)
    shards: list[Shard] = []
    cursor = 0
    for (node, batch), share in zip(fits, shares):
        if share == 0:
            continue
        pieces = math.ceil(share / batch)
        for size in apportion(share, [1.0] * pieces):
            indices = tuple(s.index for s in samples[cursor : cursor + size])
            cursor += size
            shards.append(
                Shard(
                    id=shard_id(job_id, len(shards)),
                    job_id=job_id,
                    sample_indices=indices,
                    home=node.name,
                    bounds=bounds,
                    need_gib=costmodel.shard_peak_gib(profile, size, width, height),
                )
            )
    return shards


def plan_tick(ready: Sequence[ReadySegment], nodes: Sequence[NodeState]) -> list[Assignment]:
    """One decision per idle node; `ready` is in queue order (earlier first).

    Home segments go first, so a node's own next segment is never taken by a neighbour that was
    merely faster to ask; an idle node then takes the earliest waiting segment that fits its budget.
    """
    idle = {n.info.name: n.info for n in nodes if n.online and not n.busy}
    taken: set[tuple[str, int]] = set()
    out: list[Assignment] = []
    for seg in ready:
        if seg.home in idle:
            out.append(Assignment(seg.home, seg.shard_id, seg.index))
            taken.add((seg.shard_id, seg.index))
            del idle[seg.home]
    for seg in ready:
        if not idle:
            break
        if (seg.shard_id, seg.index) in taken:
            continue
        for name, info in idle.items():
            if seg.need_gib <= costmodel.usable_gib(info.vram_gib):
                out.append(Assignment(name, seg.shard_id, seg.index))
                taken.add((seg.shard_id, seg.index))
                del idle[name]
                break
    return out
