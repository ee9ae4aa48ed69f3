"""Churn: 200 jobs on a simulated cluster whose nodes leave and come back at random.

The real coordinator (queue, planner, checkpoints hand-off, failure handling) runs against a
simulated executor with a virtual clock: a segment takes the time the speed model says for its node,
a node that leaves loses the segment it was running (the coordinator sees NodeLost, as when a raylet
dies), and a node that comes back rejoins empty-handed. Prints jobs completed, outputs written more
than once, and the work redone as a fraction of the work the jobs needed.

Run: .venv/bin/python bench/churn.py [--jobs 200] [--seed 7]
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from farm.contracts.domain import JobSpec, JobStatus, NodeInfo, Sample, SegmentResult, SegmentTask
from farm.contracts.errors import NodeLost
from farm.core.speed import SpeedBook
from farm.jobs import demand
from farm.jobs.catalog import get_model
from farm.jobs.jobspec import make_job
from farm.runtime.coordinator import Coordinator

CARDS = [(8.0, 1.0), (12.0, 1.6), (16.0, 2.2), (24.0, 3.5), (12.0, 1.3), (24.0, 2.8)]
MODELS = [("demo-tiny", 1), ("tiny-sdxl", 1), ("tiny-wan21", 9)]  # (model, frames)
MEAN_UP_S, MEAN_DOWN_S = 1800.0, 300.0


@dataclass
class Running:
    node: str
    task: SegmentTask
    started: float
    seconds: float


class ChurnExecutor:
    """Executor with a virtual clock: `wait` jumps to the next segment end or node change."""

    def __init__(self, nodes: list[NodeInfo], rng: random.Random) -> None:
        self._nodes = nodes
        self.rng = rng
        self.now = 0.0
        self.speeds = SpeedBook()
        self.up = {n.name: True for n in nodes}
        self.running: dict[int, Running] = {}
        self.handles = itertools.count()
        self.timeline: list[tuple[float, int, str]] = []  # (time, seq, node): the node flips up/down
        self.flips = itertools.count()
        for n in nodes:
            self._schedule_flip(n.name)
        self.executed = 0.0  # sample-steps computed, lost work included
        self.departures = 0
        self.coordinator: Coordinator | None = None

    def _schedule_flip(self, name: str) -> None:
        mean = MEAN_UP_S if self.up[name] else MEAN_DOWN_S
        heapq.heappush(self.timeline, (self.now + self.rng.expovariate(1 / mean), next(self.flips), name))

    def nodes(self) -> list[NodeInfo]:
        return list(self._nodes)

    def submit(self, node: str, task: SegmentTask) -> object:
        info = next(n for n in self._nodes if n.name == node)
        model = get_model(task.job.model)
        shape = demand.demand_of(task.job, model).shape
        seconds = self.speeds.step_seconds(info, shape, len(task.samples)) * (task.end - task.start)
        handle = next(self.handles)
        self.running[handle] = Running(node, task, self.now, seconds if self.up[node] else 0.0)
        return handle

    def wait(self, timeout: float) -> list[tuple[object, SegmentResult | BaseException]]:
        ends = [(r.started + r.seconds, h) for h, r in self.running.items()]
        next_end = min(ends, default=(float("inf"), None))
        if self.timeline and self.timeline[0][0] < next_end[0]:
            self.now, _, name = heapq.heappop(self.timeline)
            self.up[name] = not self.up[name]
            self._schedule_flip(name)
            out = []
            if not self.up[name]:
                self.departures += 1
                self.coordinator.node_left(name, "left the farm")  # its agent stops answering
                for h, r in list(self.running.items()):
                    if r.node == name:
                        done = (self.now - r.started) / r.seconds * (r.task.end - r.task.start)
                        self.executed += done * len(r.task.samples)
                        del self.running[h]
                        out.append((h, NodeLost(name, "left the farm")))
            else:
                self.coordinator.node_joined(next(n for n in self._nodes if n.name == name))
            return out
        if next_end[1] is None:
            return []
        self.now, handle = next_end
        r = self.running.pop(handle)
        if not self.up[r.node]:
            return [(handle, NodeLost(r.node, "was gone before the segment started"))]
        self.executed += (r.task.end - r.task.start) * len(r.task.samples)
        common = dict(shard_id=r.task.shard_id, index=r.task.index, node=r.node, gpu="sim", seconds=r.seconds)
        if r.task.last:
            return [(handle, SegmentResult(**common, images=tuple(b"" for _ in r.task.samples)))]
        return [(handle, SegmentResult(**common, checkpoint=f"{r.task.shard_id}@{r.task.end}".encode()))]

    def step_events(self) -> list:
        return []

    def interrupt(self, node: str) -> None:
        pass


class CountingSink:
    def __init__(self) -> None:
        self.writes: Counter[tuple[str, int]] = Counter()

    def write(self, job_id: str, job: JobSpec, sample: Sample, rgb: bytes, runs) -> Path:
        self.writes[(job_id, sample.index)] += 1
        return Path(job_id) / f"{sample.index}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    nodes = [NodeInfo(f"pc{i}", vram, speed, simulated=True) for i, (vram, speed) in enumerate(CARDS)]
    executor = ChurnExecutor(nodes, rng)
    sink = CountingSink()
    coordinator = Coordinator(executor, sink, clock=lambda: executor.now)
    executor.coordinator = coordinator
    needed = 0
    for i in range(args.jobs):
        model, frames = rng.choice(MODELS)
        job = make_job(model=model, prompts=[f"prompt {i}.{k}" for k in range(rng.randint(1, 4))],
                       seeds=rng.randint(1, 3), steps=rng.choice((20, 30, 40)), frames=frames,
                       owner=rng.choice(("ana", "ben", "cy")))
        coordinator.submit(job)
        needed += len(job.samples()) * job.steps
    began = time.perf_counter()
    while any(j.status in (JobStatus.QUEUED, JobStatus.RUNNING) for j in coordinator.jobs.values()):
        coordinator.tick(0)
    views = coordinator.list_jobs()
    done = sum(v.status == JobStatus.DONE for v in views)
    duplicated = sum(n - 1 for n in sink.writes.values() if n > 1)
    print(f"cluster: {len(nodes)} nodes, each up ~{MEAN_UP_S:.0f} s then down ~{MEAN_DOWN_S:.0f} s (exponential)")
    print(f"node departures: {executor.departures}, simulated time {executor.now / 3600:.1f} h, wall {time.perf_counter() - began:.1f} s")
    print(f"jobs completed: {done}/{len(views)}")
    print(f"outputs written: {sum(sink.writes.values())} for {len(sink.writes)} samples, duplicated: {duplicated}")
    print(f"work redone: {(executor.executed - needed) / needed:.4f} of the work needed "
          f"({executor.executed:.0f} sample-steps computed for {needed} needed)")


if __name__ == "__main__":
    main()
