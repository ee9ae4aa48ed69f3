"""Live progress of one job in the terminal: rich bars for the job and for each node.

It reads only the `FarmService` views (`get_job`, `list_nodes`), so the same display follows a job
on the embedded farm and, through the gRPC client, on a head. The job bar counts sample-steps (a
batch of 4 at step 10 is 40 done), so shards of different sizes add up honestly; a node bar shows
the segment it is running now.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from farm.contracts.control import FarmService, NodeStatus
from farm.contracts.text import safe_markup


class JobProgress:
    """Rich bars on stderr (stdout stays free for --json and the summary)."""

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
        )
        self.jobs: dict[str, TaskID] = {}
        self.nodes: dict[str, TaskID] = {}

    def __enter__(self) -> JobProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, service: FarmService, job_id: str) -> None:
        view = service.get_job(job_id)
        if job_id not in self.jobs:
            self.jobs[job_id] = self.progress.add_task(safe_markup(f"job {job_id}"), total=view.steps_total, detail="")
        self.progress.update(self.jobs[job_id], completed=view.steps_done,
                             detail=f"{view.samples_done}/{view.samples_total} samples, {view.status}")
        for node in service.list_nodes():
            name = node.info.name
            if name not in self.nodes:
                self.nodes[name] = self.progress.add_task(safe_markup(f"{name} ({node.info.vram_gib:g} GiB)"), total=1,
                                                          detail="")
            if node.status == NodeStatus.BUSY and node.segment_total:
                self.progress.update(self.nodes[name], total=node.segment_total, completed=node.segment_step,
                                     detail=safe_markup(node.segment.split("/")[-1]))
            else:
                self.progress.update(self.nodes[name], detail=str(node.status))
