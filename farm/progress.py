"""Rich progress display for a running job: one bar for the job, one per node.

The job bar counts sample-steps (a batch of 4 at step 10 is 40 done), so shards of different sizes
add up honestly; a node bar shows the segment it is running now.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from farm.model import JobSpec, NodeInfo, SegmentResult, StepEvent


class RichReporter:
    """`Reporter` that draws live bars on stderr (stdout stays free for --json and summaries)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description:<22}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.job: TaskID | None = None
        self.nodes: dict[str, TaskID] = {}

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def planned(self, job_id: str, job: JobSpec, nodes: Sequence[NodeInfo]) -> None:
        total = len(job.samples()) * job.steps
        self.job = self.progress.add_task(f"job {job_id}", total=total, detail="sample-steps")
        for n in nodes:
            label = f"{n.name} ({n.vram_gib:g} GiB)"
            self.nodes[n.name] = self.progress.add_task(label, total=job.steps, detail="waiting")

    def step(self, event: StepEvent) -> None:
        if self.job is not None:
            self.progress.advance(self.job, event.batch)
        bar = self.nodes.get(event.node)
        if bar is not None:
            self.progress.update(bar, completed=event.step, detail=f"{event.shard_id.split('/')[-1]} x{event.batch}")

    def segment_done(self, result: SegmentResult, steps: int, batch: int) -> None:
        bar = self.nodes.get(result.node)
        if bar is not None:
            self.progress.update(bar, detail=f"segment {result.index} done in {result.seconds:.1f}s")

    def sample_written(self, path: Path) -> None:
        pass
