"""The placements this scheduler is measured against in `bench/scheduler.py` (simulation policies).

Both get the same VRAM cost model, memory modes and per-node model cache as the farm, so what the
bench compares is only the placement:

* EqualSplit: each job's samples split equally among the nodes that hold it (what most render
  managers do), batched as large as each budget allows, every shard run whole on its node, in
  arrival order, no stealing.
* OneSamplePerTask: one task per sample with every step, batch 1, in queue order (priority, then
  arrival) to the first idle node it fits: Ray's default placement of `num_gpus=1` tasks, made
  VRAM-aware as a user would with custom resources (plain Ray would run it out of memory instead).
"""

from __future__ import annotations

import math
from collections import defaultdict, deque

from farm.core import costmodel, planner
from farm.runtime.simulate import SimJob, Task, View


class EqualSplit:
    name = "equal split"

    def __init__(self) -> None:
        self.queues: dict[str, deque[Task]] = defaultdict(deque)

    def admit(self, job: SimJob, now: float, view: View) -> None:
        fits = [(n, costmodel.best_fit(job.shape, n.vram_gib, job.samples)) for n in view.nodes]
        holders = [(n, f) for n, f in fits if f is not None]
        cursor = 0
        for (node, fit), count in zip(holders, planner.apportion(job.samples, [1.0] * len(holders))):
            for size in planner.apportion(count, [1.0] * math.ceil(count / fit.batch)) if count else []:
                sized = costmodel.best_fit(job.shape, node.vram_gib, size)
                assert sized is not None
                samples = tuple(range(cursor, cursor + size))
                self.queues[node.name].append(
                    Task(job, f"{job.job_id}/{cursor}", samples, 0, job.steps, sized.mode, sized.need_gib))
                cursor += size

    def assign(self, now: float, view: View) -> list[tuple[str, Task]]:
        return [(n.name, self.queues[n.name].popleft()) for n in view.nodes
                if n.name not in view.busy and self.queues[n.name]]

    def finished(self, node: str, task: Task, seconds: float, denoise_seconds: float) -> None:
        """Nothing to learn: the split was fixed at admission."""


class OneSamplePerTask:
    name = "one sample per task (Ray default)"

    def __init__(self) -> None:
        self.pending: list[tuple[SimJob, deque[int]]] = []

    def admit(self, job: SimJob, now: float, view: View) -> None:
        self.pending.append((job, deque(range(job.samples))))
        self.pending.sort(key=lambda p: -p[0].priority)  # stable: arrival order within a priority

    def assign(self, now: float, view: View) -> list[tuple[str, Task]]:
        idle = [n for n in view.nodes if n.name not in view.busy]
        out = []
        for job, samples in self.pending:
            for node in list(idle):
                if not samples:
                    break
                fit = costmodel.best_fit(job.shape, node.vram_gib, 1)
                if fit is not None:
                    s = samples.popleft()
                    out.append((node.name, Task(job, f"{job.job_id}/{s}", (s,), 0, job.steps, fit.mode, fit.need_gib)))
                    idle.remove(node)
        self.pending = [p for p in self.pending if p[1]]
        return out

    def finished(self, node: str, task: Task, seconds: float, denoise_seconds: float) -> None:
        """Nothing to learn: placement is first come, first served."""
