"""Queue order (pure): which job's work goes first when nodes free up.

Higher priority first. Within a priority the owners of a collective take turns: the owner with the
fewest GPU-seconds used (divided by its weight, 1 by default) goes next, counting the jobs already
placed ahead of it in this order, so one owner's batch of twenty jobs cannot starve another owner's
single job. An owner's own jobs stay first in, first out.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from farm.contracts.domain import ReadySegment
from farm.contracts.ids import job_of_shard


@dataclass(frozen=True)
class QueuedJob:
    """A job waiting for or holding nodes. `seq` is its submission order; `gpu_seconds` the estimate
    of what it still needs, which fair share charges to its owner for the jobs ordered after it."""

    job_id: str
    owner: str
    priority: int = 0
    seq: int = 0
    gpu_seconds: float = 0.0


def order_jobs(
    jobs: Sequence[QueuedJob],
    used: Mapping[str, float] | None = None,
    weights: Mapping[str, float] | None = None,
) -> list[str]:
    """Job ids in queue order; `used` is GPU-seconds each owner has used so far."""
    used = used or {}
    weights = weights or {}
    by_priority: dict[int, dict[str, deque[QueuedJob]]] = defaultdict(lambda: defaultdict(deque))
    for job in sorted(jobs, key=lambda j: j.seq):
        by_priority[job.priority][job.owner].append(job)
    order: list[str] = []
    for priority in sorted(by_priority, reverse=True):
        queues = by_priority[priority]
        charged = {owner: used.get(owner, 0.0) for owner in queues}
        while queues:
            owner = min(queues, key=lambda o: (charged[o] / weights.get(o, 1.0), queues[o][0].seq))
            job = queues[owner].popleft()
            order.append(job.job_id)
            charged[owner] += job.gpu_seconds
            if not queues[owner]:
                del queues[owner]
    return order


def job_of(segment: ReadySegment) -> str:
    """The job a ready segment belongs to (shard ids are `<job id>/s<n>`)."""
    return segment.job_id or job_of_shard(segment.shard_id)


def order_ready(ready: Sequence[ReadySegment], job_order: Sequence[str]) -> list[ReadySegment]:
    """Ready segments sorted by their job's place in `job_order` (stable: within a job, as given);
    segments of jobs not in the order go last."""
    rank = {job_id: i for i, job_id in enumerate(job_order)}
    return sorted(ready, key=lambda s: rank.get(job_of(s), len(rank)))
