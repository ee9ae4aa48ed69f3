"""The coordinator: owns a job's shards, asks the planner what runs where, and hands segments and
their checkpoints between nodes until every sample is written.

It imports no Ray and no torch: nodes are reached through an `Executor`, outputs through an
`OutputSink`, progress through a `Reporter`. A failed segment goes back to the queue with the
checkpoint it started from, so at most that one segment of work is redone; a lost node is taken
out of the table and its work resumes on the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from farm import planner
from farm.catalog import get_model
from farm.errors import JobFailed, NodeLost
from farm.ids import new_job_id
from farm.model import JobSpec, NodeState, NodeTally, ReadySegment, SegmentResult, SegmentTask, Shard, StepRun
from farm.ports import Executor, OutputSink, Reporter


@dataclass
class ShardRun:
    """A shard's progress: the next segment to run and the checkpoint it starts from."""

    shard: Shard
    next_index: int = 0
    checkpoint: bytes | None = None
    runs: list[StepRun] = field(default_factory=list)
    failures: int = 0
    running: bool = False

    @property
    def done(self) -> bool:
        return self.next_index >= len(self.shard.bounds)


@dataclass(frozen=True)
class JobResult:
    job_id: str
    outputs: list[Path]
    shards: list[Shard]
    tallies: dict[str, NodeTally]
    seconds: float


class Coordinator:
    def __init__(self, executor: Executor, sink: OutputSink, reporter: Reporter | None = None,
                 max_failures: int = 3, max_segment_steps: int = planner.DEFAULT_SEGMENT_STEPS) -> None:
        self.executor = executor
        self.sink = sink
        self.reporter = reporter
        self.max_failures = max_failures
        self.max_segment_steps = max_segment_steps
        # The latest preview PNG of each (job id, sample index) still in progress, for dashboards.
        self.previews: dict[tuple[str, int], bytes] = {}

    def run(self, job: JobSpec, job_id: str | None = None) -> JobResult:
        """Render every sample of `job` and return where the outputs went."""
        began = time.perf_counter()
        job_id = job_id or new_job_id()
        infos = {n.name: n for n in self.executor.nodes()}
        shards = planner.shard_job(job_id, job, get_model(job.model), list(infos.values()), self.max_segment_steps)
        runs = {s.id: ShardRun(s) for s in shards}
        samples = job.samples()
        tallies = {name: NodeTally() for name in infos}
        busy: set[str] = set()
        lost: set[str] = set()
        inflight: dict[object, tuple[str, ShardRun]] = {}
        outputs: list[Path] = []
        if self.reporter:
            self.reporter.planned(job_id, job, list(infos.values()))

        while not all(r.done for r in runs.values()):
            ready = [
                ReadySegment(r.shard.id, r.next_index, r.shard.home, r.shard.need_gib)
                for r in runs.values() if not r.done and not r.running
            ]
            table = [NodeState(info, busy=name in busy, online=name not in lost) for name, info in infos.items()]
            for a in planner.plan_tick(ready, table):
                run = runs[a.shard_id]
                start, end = run.shard.bounds[a.index]
                task = SegmentTask(job, run.shard.id, tuple(samples[i] for i in run.shard.sample_indices),
                                   a.index, start, end, run.checkpoint, a.memory_mode or run.shard.memory_mode)
                inflight[self.executor.submit(a.node, task)] = (a.node, run)
                run.running = True
                busy.add(a.node)
            if not inflight:
                raise JobFailed(f"job {job_id}: no online node can take its remaining segments")
            for event in self.executor.step_events():
                if self.reporter:
                    self.reporter.step(event)
            for handle, outcome in self.executor.wait(timeout=0.1):
                node, run = inflight.pop(handle)
                busy.discard(node)
                run.running = False
                if isinstance(outcome, BaseException):
                    self._failed(job_id, node, run, outcome, lost)
                    continue
                outputs.extend(self._finished(job_id, job, run, outcome, tallies[node]))
        return JobResult(job_id, outputs, shards, tallies, time.perf_counter() - began)

    def _failed(self, job_id: str, node: str, run: ShardRun, error: BaseException, lost: set[str]) -> None:
        """Put the segment back with the checkpoint it started from; give up after max_failures."""
        if isinstance(error, NodeLost):
            lost.add(node)
        run.failures += 1
        if run.failures >= self.max_failures:
            raise JobFailed(f"job {job_id}: shard {run.shard.id} failed {run.failures} times, last on {node}: {error}")

    def _finished(self, job_id: str, job: JobSpec, run: ShardRun, result: SegmentResult, tally: NodeTally) -> list[Path]:
        start, end = run.shard.bounds[result.index]
        run.runs.append(StepRun(result.node, result.gpu, start, end, result.memory_mode))
        run.next_index += 1
        run.checkpoint = result.checkpoint
        for index, png in zip(run.shard.sample_indices, result.previews):
            self.previews[(job_id, index)] = png
        tally.segments += 1
        tally.seconds += result.seconds
        tally.steps += (end - start) * run.shard.batch
        tally.shard_ids.add(run.shard.id)
        tally.shards = len(tally.shard_ids)
        if self.reporter:
            self.reporter.segment_done(result, end - start, run.shard.batch)
        if not run.done:
            return []
        samples = job.samples()
        paths = []
        for index, rgb in zip(run.shard.sample_indices, result.images, strict=True):
            self.previews.pop((job_id, index), None)
            path = self.sink.write(job_id, job, samples[index], rgb, run.runs)
            paths.append(path)
            if self.reporter:
                self.reporter.sample_written(path)
        tally.samples += len(paths)
        return paths
